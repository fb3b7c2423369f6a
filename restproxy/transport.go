package restproxy

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"
)

// Transport returns an http.RoundTripper that retries, after a back-off,
// idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE) that got a 5xx,
// up to Config.Retries times. base nil means a transport like
// http.DefaultTransport that keeps more idle connections per host.
//
// It exists because disgo's REST client retries only 429s: its
// rest.RateLimiter sees the 5xx in UnlockBucket but cannot make the
// client send again. The transport does it between WaitBucket and
// UnlockBucket, and each retry waits for the bucket and the global limit
// again, at the head of its bucket's queue. It retries only requests that
// a disgo client sent through this Limiter, with bodies it can replay.
//
// disgo sends its requests without their context (v0.18.15 builds the
// request before it applies rest.WithCtx), so a retry is bounded by the
// retry budget and by the client's timeout, which ConfigOpt moves into
// the transport, not by the caller's context.
func (l *Limiter) Transport(base http.RoundTripper) http.RoundTripper {
	return l.transport(base, 0)
}

// transport returns the Transport; timeout > 0 bounds each round trip,
// retries and the reading of the body included, as http.Client.Timeout
// would.
func (l *Limiter) transport(base http.RoundTripper, timeout time.Duration) *transport {
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 100
		base = t
	}
	return &transport{l: l, base: base, timeout: timeout}
}

type transport struct {
	l       *Limiter
	base    http.RoundTripper
	timeout time.Duration
}

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if tr.timeout <= 0 {
		return tr.roundTrip(req)
	}
	ctx, cancel := context.WithTimeout(req.Context(), tr.timeout)
	rs, err := tr.roundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	rs.Body = &cancelBody{ReadCloser: rs.Body, cancel: cancel}
	return rs, nil
}

// cancelBody ends a round trip's timeout when its body is read to the end
// or closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.cancel()
	}
	return n, err
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (tr *transport) roundTrip(req *http.Request) (*http.Response, error) {
	rs, err := tr.base.RoundTrip(req)
	if err != nil || rs.StatusCode < 500 || !idempotent(req.Method) {
		return rs, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return rs, nil
	}
	key := requestKey{req.Method, apiPath(req.URL.Path)}
	if req.URL.RawQuery != "" {
		key.url += "?" + req.URL.RawQuery
	}
	ctx := req.Context()
	for attempt := 0; attempt < tr.l.cfg.Retries && rs.StatusCode >= 500; attempt++ {
		t := tr.l.claimPending(key)
		if t == nil {
			return rs, nil
		}
		drain(rs)
		tr.l.done(t, rs, true)
		err := sleep(ctx, tr.l.backoff(attempt))
		if err == nil {
			err = tr.l.wait(ctx, t, true)
		}
		tr.l.unclaim(t)
		if err != nil {
			return nil, err
		}
		retry := req.Clone(ctx)
		if req.GetBody != nil {
			if retry.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		if rs, err = tr.base.RoundTrip(retry); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// CloseIdleConnections closes the base transport's idle connections;
// disgo's client.Close calls it.
func (tr *transport) CloseIdleConnections() {
	if c, ok := tr.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// backoff is the wait before retry attempt+1 after a 5xx: RetryBackoff
// doubled per attempt, up to 32 times, plus up to a quarter of jitter.
func (l *Limiter) backoff(attempt int) time.Duration {
	d := l.cfg.RetryBackoff << min(attempt, 5)
	return d + rand.N(d/4+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// drain reads a little of a body we discard, so that its connection can
// be reused, and closes it.
func drain(rs *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rs.Body, 64<<10))
	_ = rs.Body.Close()
}
