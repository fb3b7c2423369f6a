package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/disgoorg/disgo/rest"
)

// RESTProxy is where the fleet's processes send their Discord REST calls
// so that together they obey one set of buckets and one global limit: the
// HTTP proxy (restproxy's server form) that one process of the fleet
// serves. Each process's disgo REST client goes through it with no rate
// limiter of its own; the proxy's limiter is the fleet's.
type RESTProxy struct {
	// URL is the proxy's base URL, http(s)://host:port; the client adds
	// /api/v10.
	URL string
}

// ClientOpts returns the disgo REST options that send through the proxy.
func (p RESTProxy) ClientOpts() ([]rest.ConfigOpt, error) {
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("natsfleet: REST proxy URL %q is not http(s)://host:port", p.URL)
	}
	return []rest.ConfigOpt{
		rest.WithURL(strings.TrimSuffix(p.URL, "/") + "/api/v" + fmt.Sprint(rest.Version)),
		rest.WithRateLimiter(rest.NewNoopRateLimiter()),
	}, nil
}

// restProxyKey is the store key under which the proxy's URL is published.
const restProxyKey = "fleet.restproxy"

// PublishRESTProxy records the proxy's URL in the fleet's store, for
// [LookupRESTProxy] in the other processes.
func PublishRESTProxy(ctx context.Context, s *KVStore, p RESTProxy) error {
	if _, err := p.ClientOpts(); err != nil {
		return err
	}
	data, _ := json.Marshal(p.URL)
	return s.Set(ctx, restProxyKey, data)
}

// LookupRESTProxy returns the proxy published with [PublishRESTProxy].
func LookupRESTProxy(ctx context.Context, s *KVStore) (RESTProxy, error) {
	v, ok, err := s.Get(ctx, restProxyKey)
	if err != nil {
		return RESTProxy{}, err
	}
	if !ok {
		return RESTProxy{}, errors.New("natsfleet: no REST proxy published in the fleet's store: start the process that serves it first")
	}
	var u string
	if err := json.Unmarshal(v, &u); err != nil {
		return RESTProxy{}, fmt.Errorf("natsfleet: REST proxy entry: %w", err)
	}
	return RESTProxy{URL: u}, nil
}
