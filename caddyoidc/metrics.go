package caddyoidc

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics, registered in Caddy's metrics registry (served by Caddy's
// `metrics` handler and the admin endpoint's /metrics). All names start with
// caddy_oidc_.
type oidcMetrics struct {
	logins        *prometheus.CounterVec
	callbacks     *prometheus.CounterVec
	refreshes     *prometheus.CounterVec
	refreshTime   prometheus.Histogram
	mints         *prometheus.CounterVec
	verifications *prometheus.CounterVec
	cacheHits     *prometheus.CounterVec
	storeErrors   *prometheus.CounterVec
}

var (
	metricsOnce sync.Once
	metrics     oidcMetrics
)

func initMetrics(reg *prometheus.Registry) {
	metricsOnce.Do(func() {
		const ns = "caddy_oidc"
		metrics = oidcMetrics{
			logins: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "logins_total",
				Help: "Logins started (redirects to the provider)."}, []string{"provider", "outcome"}),
			callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "callbacks_total",
				Help: "Login callbacks by outcome: success, rejected (state, provider error, bad code or ID token), unavailable."},
				[]string{"provider", "outcome"}),
			refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "refreshes_total",
				Help: "Refreshes at the provider by outcome: success, invalid_grant, unavailable."}, []string{"provider", "outcome"}),
			refreshTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "refresh_duration_seconds",
				Help:    "Latency of refresh calls to the provider's token endpoint.",
				Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
			mints: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "azat_mints_total",
				Help: "AZAT mint requests by outcome: success, no_grant, fallback, unavailable."}, []string{"provider", "outcome"}),
			verifications: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "verifications_total",
				Help: "Authentications of requests by provider, kind (session, bearer, azat, anonymous) and outcome (ok, invalid, unavailable, forbidden)."},
				[]string{"provider", "kind", "outcome"}),
			cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cache_hits_total",
				Help: "Verified-token and decoded-session cache hits by cache."}, []string{"provider", "cache"}),
			storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "store_errors_total",
				Help: "Errors of Caddy storage (sessions, grants) by operation."}, []string{"provider", "op"}),
		}
	})
	for _, c := range []prometheus.Collector{metrics.logins, metrics.callbacks, metrics.refreshes, metrics.refreshTime,
		metrics.mints, metrics.verifications, metrics.cacheHits, metrics.storeErrors} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err)
			}
		}
	}
}

// count increments a labelled counter when metrics are initialised. The
// labelled children are resolved once (no label hashing on the request
// path).
func count(v *prometheus.CounterVec, labels ...string) {
	if v == nil {
		return
	}
	k := counterKey{vec: v}
	copy(k.labels[:], labels)
	counters.mu.RLock()
	c, ok := counters.m[k]
	counters.mu.RUnlock()
	if !ok {
		c = v.WithLabelValues(slices.Clone(labels)...)
		counters.mu.Lock()
		counters.m[k] = c
		counters.mu.Unlock()
	}
	c.Inc()
}

// counterKey names one child of a CounterVec (at most two labels here).
type counterKey struct {
	vec    *prometheus.CounterVec
	labels [2]string
}

// counters memoizes the children count resolves; the label values are a
// small fixed set (kinds, outcomes, operations).
var counters = struct {
	mu sync.RWMutex
	m  map[counterKey]prometheus.Counter
}{m: map[counterKey]prometheus.Counter{}}

// providerMetrics are the counters of one provider handler: the metrics'
// vectors with the provider label set to its name ("" for a site's single
// unnamed provider).
type providerMetrics struct {
	logins, callbacks, refreshes, mints, verifications, cacheHits, storeErrors *prometheus.CounterVec
}

// metricsFor curries the counters for provider (all nil, counting nothing,
// when metrics are not initialised).
func metricsFor(provider string) providerMetrics {
	curry := func(v *prometheus.CounterVec) *prometheus.CounterVec {
		if v == nil {
			return nil
		}
		return v.MustCurryWith(prometheus.Labels{"provider": provider})
	}
	return providerMetrics{logins: curry(metrics.logins), callbacks: curry(metrics.callbacks),
		refreshes: curry(metrics.refreshes), mints: curry(metrics.mints), verifications: curry(metrics.verifications),
		cacheHits: curry(metrics.cacheHits), storeErrors: curry(metrics.storeErrors)}
}

func (o *OIDC) observeRefresh(start time.Time, outcome string) {
	if metrics.refreshTime != nil {
		metrics.refreshTime.Observe(time.Since(start).Seconds())
	}
	count(o.rt.m.refreshes, outcome)
}
