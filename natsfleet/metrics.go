package natsfleet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// The headers of a metrics reply.
const (
	hdrCluster = "Fleet-Cluster"
	hdrPID     = "Fleet-Pid"
	hdrError   = "Fleet-Error"
)

// MetricsConfig configures [ServeMetrics].
type MetricsConfig struct {
	// Prefix is the fleet's subject prefix (default "fleet"): requests
	// come on <prefix>.metrics.
	Prefix string
	// Cluster is the cluster the process serves, added to its metrics as
	// the "cluster" label where they have none.
	Cluster int
	// Gatherer is what the process's metrics are gathered from (its
	// *prometheus.Registry, with the fleet's collectors and the Go and
	// process ones).
	Gatherer prometheus.Gatherer
}

// MetricsResponder answers the requests of a [ProcessCollector] with the
// metrics of this process. Create it with [ServeMetrics]; Close stops it.
type MetricsResponder struct {
	sub  *nats.Subscription
	done chan struct{} // closed when the subscription's goroutine has exited
}

// ServeMetrics starts answering, on nc, the fleet's requests for this
// process's metrics: each request gathers cfg.Gatherer and replies with
// the families (Prometheus's delimited protobuf format), the cluster and
// the pid.
func ServeMetrics(nc *nats.Conn, cfg MetricsConfig) (*MetricsResponder, error) {
	if nc == nil || cfg.Gatherer == nil {
		return nil, errors.New("natsfleet: ServeMetrics: nil connection or MetricsConfig.Gatherer")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if err := checkPrefix(cfg.Prefix, "MetricsConfig.Prefix"); err != nil {
		return nil, err
	}
	mr := &MetricsResponder{done: make(chan struct{})}
	cluster, pid := strconv.Itoa(cfg.Cluster), strconv.Itoa(os.Getpid())
	sub, err := nc.Subscribe(cfg.Prefix+".metrics", func(m *nats.Msg) {
		reply := nats.NewMsg(m.Reply)
		reply.Header.Set(hdrCluster, cluster)
		reply.Header.Set(hdrPID, pid)
		body, err := encodeFamilies(cfg.Gatherer)
		if err == nil {
			err = checkPayload(nc, "metrics reply", len(body))
		}
		if err != nil {
			reply.Header.Set(hdrError, err.Error())
		} else {
			reply.Data = body
		}
		_ = m.RespondMsg(reply)
	})
	if err != nil {
		return nil, fmt.Errorf("natsfleet: subscribe to %s.metrics: %w", cfg.Prefix, err)
	}
	sub.SetClosedHandler(func(string) { close(mr.done) })
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsfleet: subscribe to %s.metrics: %w", cfg.Prefix, err)
	}
	mr.sub = sub
	return mr, nil
}

// Close stops answering and waits (at most 5 s) for an answer being
// made.
func (mr *MetricsResponder) Close() {
	_ = mr.sub.Unsubscribe()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-mr.done:
	case <-t.C:
	}
}

func encodeFamilies(g prometheus.Gatherer) ([]byte, error) {
	fams, err := g.Gather()
	if err != nil && len(fams) == 0 {
		return nil, fmt.Errorf("gather: %w", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return nil, fmt.Errorf("encode %s: %w", f.GetName(), err)
		}
	}
	return buf.Bytes(), nil
}

// ProcessCollectorConfig configures a [ProcessCollector].
type ProcessCollectorConfig struct {
	// Prefix is the fleet's subject prefix (default "fleet").
	Prefix string
	// Expect, if set, returns how many processes should answer: a
	// collection returns as soon as that many have. Without it, or while
	// fewer answer, a collection waits Timeout.
	Expect func() int
	// Timeout bounds a collection's wait for answers (default 2 s).
	Timeout time.Duration
}

// ProcessCollector is a prometheus.Collector that gathers, over NATS, the
// metrics of every process of the fleet that runs [ServeMetrics], and
// hands them to the registry it is registered on with "cluster" and "pid"
// labels added (a metric that already has a cluster label keeps it).
// Registered on the parent's registry (next to metrics.Register's
// collectors) it makes one /metrics show every child's shards, events and
// process figures as in one process: sum without(pid) gives the fleet's
// totals. It is unchecked (its Describe sends nothing), since what the
// children export is only known when they answer.
//
// Besides the children's metrics it exports
// fleet_process_metrics_answered, the processes that answered the last
// collection, and fleet_process_metrics_errors_total, the answers that
// could not be used.
type ProcessCollector struct {
	nc      *nats.Conn
	subject string
	expect  func() int
	timeout time.Duration

	answered *prometheus.Desc
	errs     prometheus.Counter

	mu    sync.Mutex                  // guards descs
	descs map[string]*prometheus.Desc // family name -> its Desc
}

// NewProcessCollector returns a ProcessCollector asking on nc.
func NewProcessCollector(nc *nats.Conn, cfg ProcessCollectorConfig) (*ProcessCollector, error) {
	if nc == nil {
		return nil, errors.New("natsfleet: NewProcessCollector: nil connection")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if err := checkPrefix(cfg.Prefix, "ProcessCollectorConfig.Prefix"); err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("natsfleet: ProcessCollectorConfig.Timeout (%v) < 0: use 0 for the default (2s)", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	return &ProcessCollector{
		nc: nc, subject: cfg.Prefix + ".metrics", expect: cfg.Expect, timeout: cfg.Timeout,
		answered: prometheus.NewDesc("fleet_process_metrics_answered",
			"Fleet processes whose metrics the last collection gathered.", nil, nil),
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleet_process_metrics_errors_total",
			Help: "Answers of fleet processes to a metrics collection that could not be used.",
		}),
		descs: map[string]*prometheus.Desc{},
	}, nil
}

// Describe sends nothing: the collector is unchecked.
func (c *ProcessCollector) Describe(chan<- *prometheus.Desc) {}

// Collect asks every process for its metrics and sends what the answers
// hold, waiting at most Timeout.
func (c *ProcessCollector) Collect(ch chan<- prometheus.Metric) {
	answers := c.gather()
	ch <- prometheus.MustNewConstMetric(c.answered, prometheus.GaugeValue, float64(len(answers)))
	for _, a := range answers {
		for _, f := range a.fams {
			desc := c.desc(f)
			for _, m := range f.Metric {
				ch <- &remoteMetric{desc: desc, m: withLabels(m, a.cluster, a.pid)}
			}
		}
	}
	c.errs.Collect(ch)
}

// desc returns the Desc for a family, the same one for each name.
func (c *ProcessCollector) desc(f *dto.MetricFamily) *prometheus.Desc {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.descs[f.GetName()]
	if !ok {
		d = prometheus.NewDesc(f.GetName(), f.GetHelp(), nil, nil)
		c.descs[f.GetName()] = d
	}
	return d
}

type processAnswer struct {
	cluster, pid string
	fams         []*dto.MetricFamily
}

// gather asks and collects the answers.
func (c *ProcessCollector) gather() []processAnswer {
	inbox := c.nc.NewRespInbox()
	// Answers beyond the buffer are dropped by NATS (a slow consumer),
	// which only means fewer processes answered.
	msgs := make(chan *nats.Msg, 256)
	sub, err := c.nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		c.errs.Inc()
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(c.subject, inbox, nil); err != nil {
		c.errs.Inc()
		return nil
	}
	want := 0
	if c.expect != nil {
		want = c.expect()
	}
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	var answers []processAnswer
	for want <= 0 || len(answers) < want {
		select {
		case m := <-msgs:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				continue // "no responders": nobody serves metrics
			}
			a, err := decodeAnswer(m)
			if err != nil {
				c.errs.Inc()
				continue
			}
			answers = append(answers, a)
		case <-timer.C:
			return answers
		}
	}
	return answers
}

func decodeAnswer(m *nats.Msg) (processAnswer, error) {
	a := processAnswer{cluster: m.Header.Get(hdrCluster), pid: m.Header.Get(hdrPID)}
	if e := m.Header.Get(hdrError); e != "" {
		return a, errors.New(e)
	}
	dec := expfmt.NewDecoder(bytes.NewReader(m.Data), expfmt.NewFormat(expfmt.TypeProtoDelim))
	for {
		f := &dto.MetricFamily{}
		if err := dec.Decode(f); err != nil {
			if errors.Is(err, io.EOF) {
				return a, nil
			}
			return a, err
		}
		a.fams = append(a.fams, f)
	}
}

// withLabels returns m with cluster (unless it has one) and pid added,
// its labels sorted by name.
func withLabels(m *dto.Metric, cluster, pid string) *dto.Metric {
	hasCluster := false
	labels := make([]*dto.LabelPair, 0, len(m.Label)+2)
	for _, l := range m.Label {
		if l.GetName() == "pid" {
			continue
		}
		hasCluster = hasCluster || l.GetName() == "cluster"
		labels = append(labels, l)
	}
	if !hasCluster {
		labels = append(labels, &dto.LabelPair{Name: strPtr("cluster"), Value: strPtr(cluster)})
	}
	labels = append(labels, &dto.LabelPair{Name: strPtr("pid"), Value: strPtr(pid)})
	slices.SortFunc(labels, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	m.Label = labels
	return m
}

func strPtr(s string) *string { return &s }

// remoteMetric is a metric gathered from another process.
type remoteMetric struct {
	desc *prometheus.Desc
	m    *dto.Metric
}

func (r *remoteMetric) Desc() *prometheus.Desc { return r.desc }

func (r *remoteMetric) Write(out *dto.Metric) error {
	out.Label = r.m.Label
	out.Counter, out.Gauge, out.Untyped = r.m.Counter, r.m.Gauge, r.m.Untyped
	out.Histogram, out.Summary = r.m.Histogram, r.m.Summary
	out.TimestampMs = r.m.TimestampMs
	return nil
}

var _ prometheus.Collector = (*ProcessCollector)(nil)
