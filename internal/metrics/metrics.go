// Package metrics exports nfsdrop's Prometheus metrics. It implements the
// small observer interfaces that store/, lmtp/ and pop3/ define (those
// packages do not import Prometheus), and wraps the user database to time
// its lookups.
//
// Label values are bounded sets (results, reply codes, errno names, check
// names); no user name or address is ever a label.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nfsdrop/nfsdrop/internal/userdb"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

// Metrics is one process's set of metrics, registered in its own registry
// (no global state).
type Metrics struct {
	Registry *prometheus.Registry

	deliveries       *prometheus.CounterVec
	deliveryDuration prometheus.Histogram
	fsyncDuration    *prometheus.HistogramVec
	bytesStored      prometheus.Counter
	recipientsPerTxn prometheus.Histogram
	quotaRefusals    prometheus.Counter
	lmtpConnections  prometheus.Gauge

	pop3Open      prometheus.Gauge
	pop3Sessions  *prometheus.CounterVec
	pop3Logins    *prometheus.CounterVec
	pop3Retrieved prometheus.Counter
	pop3Deleted   prometheus.Counter
	lockTakeovers prometheus.Counter
	indexLookups  *prometheus.CounterVec

	userdbDuration *prometheus.HistogramVec
	userdbErrors   *prometheus.CounterVec
	scanDuration   prometheus.Histogram
	scanResults    *prometheus.CounterVec
	fsErrors       *prometheus.CounterVec
	tmpSwept       prometheus.Counter

	volumeUp         *prometheus.GaugeVec
	volumeInFlight   *prometheus.GaugeVec
	volumeRefused    *prometheus.CounterVec
	volumeDeliveries *prometheus.CounterVec
	volumeDuration   *prometheus.HistogramVec

	names []string
}

// Names of every nfsdrop metric this program exports, including vectors
// with no series yet (the Grafana dashboard and alert rules tests check
// their queries against this list).
func (m *Metrics) Names() []string { return m.names }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func describeNames(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	var out []string
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New makes and registers every metric.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{Registry: r}
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_deliveries_total",
		Help: "Recipients answered, by outcome (delivered, deferred, refused) and reply code."}, []string{"outcome", "code"})
	m.deliveryDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nfsdrop_delivery_duration_seconds",
		Help: "Time from the start of DATA to a recipient's answer.", Buckets: latencyBuckets})
	m.fsyncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nfsdrop_store_fsync_duration_seconds",
		Help: "fsync latency of message files (kind=file) and of new/ (kind=dir): the durable share of a delivery.", Buckets: latencyBuckets}, []string{"kind"})
	m.bytesStored = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_store_bytes_total", Help: "Bytes of messages published into Maildirs (once per recipient)."})
	m.recipientsPerTxn = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nfsdrop_lmtp_recipients_per_transaction",
		Help: "Recipients per LMTP transaction.", Buckets: []float64{1, 2, 5, 10, 20, 50, 100}})
	m.quotaRefusals = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_quota_refusals_total", Help: "Recipients refused or deferred for being over quota."})
	m.lmtpConnections = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nfsdrop_lmtp_connections", Help: "Open LMTP connections."})
	m.pop3Open = prometheus.NewGauge(prometheus.GaugeOpts{Name: "nfsdrop_pop3_sessions", Help: "Open POP3 sessions."})
	m.pop3Sessions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_pop3_sessions_total", Help: "POP3 sessions ended, by how they ended (quit, eof, timeout, error, shutdown, auth-fail; login-timeout and evicted: dropped without logging in)."}, []string{"end"})
	m.pop3Logins = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_pop3_logins_total",
		Help: "POP3 logins by result (ok, auth_failed, in_use, temp_failure, perm_failure)."}, []string{"result"})
	m.pop3Retrieved = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_pop3_retrieved_total", Help: "Messages retrieved over POP3."})
	m.pop3Deleted = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_pop3_deleted_total", Help: "Messages deleted over POP3 (committed at QUIT)."})
	m.lockTakeovers = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_pop3_lock_takeovers_total", Help: "Stale session locks taken over (a session died without releasing)."})
	m.indexLookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_index_cache_total",
		Help: "POP3 listing cache outcomes per login: hit, partial (new/ relisted), miss (invalidated or cold)."}, []string{"result"})
	m.userdbDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nfsdrop_userdb_duration_seconds",
		Help: "User database latency by operation (lookup, auth).", Buckets: latencyBuckets}, []string{"op"})
	m.userdbErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_userdb_errors_total",
		Help: "User database failures that were not a plain 'no such user' or 'wrong password', by operation."}, []string{"op"})
	m.scanDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nfsdrop_scan_duration_seconds", Help: "clamd scan latency.", Buckets: latencyBuckets})
	m.scanResults = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_scan_total", Help: "clamd scans by result (clean, found, skipped, too_large, unavailable, aborted)."}, []string{"result"})
	m.fsErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_fs_errors_total",
		Help: "Filesystem errors met by the store, by errno (ESTALE, EIO, ENOSPC, EDQUOT, ...)."}, []string{"errno"})
	m.tmpSwept = prometheus.NewCounter(prometheus.CounterOpts{Name: "nfsdrop_tmp_swept_total", Help: "Abandoned files removed from tmp/ by the sweeper."})
	m.volumeUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nfsdrop_volume_up",
		Help: "1 while the volume's health probe (an lstat of its mount marker) answers in time, 0 while it is down and its calls are refused."}, []string{"volume"})
	m.volumeInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "nfsdrop_volume_calls_in_flight",
		Help: "Filesystem calls in flight on the volume (bounded by store.volume_max_calls); stuck at the bound while its filer hangs."}, []string{"volume"})
	m.volumeRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_volume_calls_refused_total",
		Help: "Filesystem calls refused on the volume: reason down (the probe failed), busy (no free slot within store.volume_call_wait) or slow (a lookup not answered within store.volume_probe_timeout, given up)."}, []string{"volume", "reason"})
	m.volumeDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nfsdrop_volume_deliveries_total",
		Help: "Recipients' deliveries into the volume's Maildirs by result (delivered, deferred, refused)."}, []string{"volume", "result"})
	m.volumeDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "nfsdrop_volume_delivery_seconds",
		Help: "Time from the start of writing a message on the volume to a recipient's outcome there.", Buckets: latencyBuckets}, []string{"volume"})
	for _, c := range []prometheus.Collector{m.deliveries, m.deliveryDuration, m.fsyncDuration, m.bytesStored, m.recipientsPerTxn,
		m.quotaRefusals, m.lmtpConnections, m.pop3Open, m.pop3Sessions, m.pop3Logins, m.pop3Retrieved, m.pop3Deleted,
		m.lockTakeovers, m.indexLookups, m.userdbDuration, m.userdbErrors, m.scanDuration, m.scanResults, m.fsErrors, m.tmpSwept,
		m.volumeUp, m.volumeInFlight, m.volumeRefused, m.volumeDeliveries, m.volumeDuration} {
		f(c)
		m.names = append(m.names, describeNames(c)...)
	}
	// Make label sets visible from the start, so dashboards and alerts see
	// zeros instead of "no data".
	for _, k := range []string{"kind=file", "kind=dir"} {
		m.fsyncDuration.WithLabelValues(k[5:])
	}
	for _, r := range []string{"ok", "auth_failed", "in_use", "temp_failure", "perm_failure"} {
		m.pop3Logins.WithLabelValues(r)
	}
	// Sessions dropped without logging in: a rise means someone holds
	// connections open to fill pop3.max_sessions.
	for _, e := range []string{"login-timeout", "evicted"} {
		m.pop3Sessions.WithLabelValues(e)
	}
	for _, r := range []string{"hit", "partial", "miss"} {
		m.indexLookups.WithLabelValues(r)
	}
	for _, e := range []string{"ESTALE", "EIO", "ENOSPC", "EDQUOT"} {
		m.fsErrors.WithLabelValues(e)
	}
	return m
}

// Serve exposes /metrics on l until ctx ends.
func (m *Metrics) Serve(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// --- store.Observer ---

// Fsync records an fsync of kind "file" or "dir".
func (m *Metrics) Fsync(kind string, d time.Duration) {
	m.fsyncDuration.WithLabelValues(kind).Observe(d.Seconds())
}

// FSError records a filesystem error by errno name.
func (m *Metrics) FSError(errno syscall.Errno) {
	m.fsErrors.WithLabelValues(errnoName(errno)).Inc()
}

// Stored records bytes published for one recipient.
func (m *Metrics) Stored(bytes int64) { m.bytesStored.Add(float64(bytes)) }

// LockTakeover records a stale lock taken over.
func (m *Metrics) LockTakeover() { m.lockTakeovers.Inc() }

// IndexLookup records how a POP3 listing was made.
func (m *Metrics) IndexLookup(result string) { m.indexLookups.WithLabelValues(result).Inc() }

// TmpSwept records files removed by the sweeper.
func (m *Metrics) TmpSwept(n int) { m.tmpSwept.Add(float64(n)) }

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.ESTALE:
		return "ESTALE"
	case syscall.EIO:
		return "EIO"
	case syscall.ENOSPC:
		return "ENOSPC"
	case syscall.EDQUOT:
		return "EDQUOT"
	case syscall.EFBIG:
		return "EFBIG"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.EACCES:
		return "EACCES"
	case syscall.EPERM:
		return "EPERM"
	case syscall.EROFS:
		return "EROFS"
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.EEXIST:
		return "EEXIST"
	}
	return "other"
}

// --- lmtp.Observer ---

// Recipient records one recipient's answer.
func (m *Metrics) Recipient(code int, d time.Duration) {
	outcome := "delivered"
	switch {
	case code >= 500:
		outcome = "refused"
	case code >= 400:
		outcome = "deferred"
	}
	m.deliveries.WithLabelValues(outcome, strconv.Itoa(code)).Inc()
	if d > 0 {
		m.deliveryDuration.Observe(d.Seconds())
	}
	if code == 552 || code == 452 {
		m.quotaRefusals.Inc()
	}
}

// Transaction records the recipients of one DATA.
func (m *Metrics) Transaction(recipients int) { m.recipientsPerTxn.Observe(float64(recipients)) }

// Connections records an LMTP connection opening (+1) or closing (-1).
func (m *Metrics) Connections(delta int) { m.lmtpConnections.Add(float64(delta)) }

// --- pop3.Observer ---

// SessionStarted records a POP3 session start.
func (m *Metrics) SessionStarted() { m.pop3Open.Inc() }

// SessionEnded records a POP3 session's end.
func (m *Metrics) SessionEnded(how string, retrieved, deleted int) {
	m.pop3Open.Dec()
	m.pop3Sessions.WithLabelValues(how).Inc()
	m.pop3Retrieved.Add(float64(retrieved))
	m.pop3Deleted.Add(float64(deleted))
}

// Login records a login attempt's result.
func (m *Metrics) Login(result string) { m.pop3Logins.WithLabelValues(result).Inc() }

// --- scan hook ---

// ScanOutcome records a clamd scan (its outcome is one of scan's
// Outcome constants: clean, found, skipped, too_large, unavailable,
// aborted).
func (m *Metrics) ScanOutcome(result string, d time.Duration) {
	m.scanResults.WithLabelValues(result).Inc()
	m.scanDuration.Observe(d.Seconds())
}

// --- userdb ---

// UserDB wraps db to time lookups and count failures other than "no such
// user" and "wrong password".
func (m *Metrics) UserDB(db userdb.DB) userdb.DB { return instrumentedDB{db: db, m: m} }

type instrumentedDB struct {
	db userdb.DB
	m  *Metrics
}

func (i instrumentedDB) observe(op string, start time.Time, err error) {
	i.m.userdbDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && !failure.UserFault(err) {
		i.m.userdbErrors.WithLabelValues(op).Inc()
	}
}

func (i instrumentedDB) Lookup(ctx context.Context, address string) (*userdb.User, error) {
	start := time.Now()
	u, err := i.db.Lookup(ctx, address)
	i.observe("lookup", start, err)
	return u, err
}

func (i instrumentedDB) Authenticate(ctx context.Context, name, password string) (*userdb.User, error) {
	start := time.Now()
	u, err := i.db.Authenticate(ctx, name, password)
	i.observe("auth", start, err)
	return u, err
}

func (i instrumentedDB) Close() error { return i.db.Close() }

// --- volumes ---

// Volume results (nfsdrop_volume_deliveries_total's result label).
const (
	VolumeDelivered = "delivered"
	VolumeDeferred  = "deferred"
	VolumeRefused   = "refused"
)

// VolumeMetrics is one volume's metrics: the observer of its gate
// (fsgate.Observer) and of its store (store.DeliveryObserver, which also
// feeds the process-wide store metrics).
type VolumeMetrics struct {
	*Metrics
	up, inFlight prometheus.Gauge
	refused      *prometheus.CounterVec // curried by volume
	deliveries   map[string]prometheus.Counter
	duration     prometheus.Observer
}

// Volume returns the metrics of the configured volume name. The volume
// label takes only the names the configuration gives (a bounded set,
// checked there); every series of the volume is made at once, so a
// dashboard shows zeros rather than "no data". Calling it again for the
// same name (a reload) returns the same series.
func (m *Metrics) Volume(name string) *VolumeMetrics {
	v := &VolumeMetrics{
		Metrics:    m,
		up:         m.volumeUp.WithLabelValues(name),
		inFlight:   m.volumeInFlight.WithLabelValues(name),
		refused:    m.volumeRefused.MustCurryWith(prometheus.Labels{"volume": name}),
		deliveries: map[string]prometheus.Counter{},
		duration:   m.volumeDuration.WithLabelValues(name),
	}
	for _, r := range []string{"down", "busy", "slow"} {
		v.refused.WithLabelValues(r)
	}
	for _, r := range []string{VolumeDelivered, VolumeDeferred, VolumeRefused} {
		v.deliveries[r] = m.volumeDeliveries.WithLabelValues(name, r)
	}
	return v
}

// VolumeUp records the volume's health (fsgate.Observer).
func (v *VolumeMetrics) VolumeUp(up bool) {
	if up {
		v.up.Set(1)
	} else {
		v.up.Set(0)
	}
}

// CallsInFlight records the calls holding a slot (fsgate.Observer).
func (v *VolumeMetrics) CallsInFlight(n int) { v.inFlight.Set(float64(n)) }

// CallRefused records a refused call (fsgate.Observer); reason is one of
// fsgate's reasons (down, busy, slow).
func (v *VolumeMetrics) CallRefused(reason string) { v.refused.WithLabelValues(reason).Inc() }

// Delivery records one recipient's outcome on the volume
// (store.DeliveryObserver).
func (v *VolumeMetrics) Delivery(err error, d time.Duration) {
	result := VolumeDelivered
	switch {
	case err == nil:
	case failure.As(err).Temporary():
		result = VolumeDeferred
	default:
		result = VolumeRefused
	}
	v.deliveries[result].Inc()
	v.duration.Observe(d.Seconds())
}
