package metrics

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfsdrop/nfsdrop/internal/fsgate"
	"github.com/nfsdrop/nfsdrop/store"
	"github.com/nfsdrop/nfsdrop/store/failure"
)

var (
	_ fsgate.Observer        = (*VolumeMetrics)(nil)
	_ store.DeliveryObserver = (*VolumeMetrics)(nil)
)

// Every volume series exists from the start for each configured volume,
// with its volume label and nothing else that varies.
func TestVolumeSeriesMadeUpFront(t *testing.T) {
	m := New()
	m.Volume("filer1")
	m.Volume("filer2")
	m.Volume("filer1") // a reload: the same series
	for _, name := range []string{"nfsdrop_volume_up", "nfsdrop_volume_calls_in_flight"} {
		if n := seriesCount(t, m, name); n != 2 {
			t.Errorf("%s: %d series, want one per volume (2)", name, n)
		}
	}
	if n := seriesCount(t, m, "nfsdrop_volume_calls_refused_total"); n != 6 {
		t.Errorf("refusals: %d series, want volume × {down, busy, slow} (6)", n)
	}
	if n := seriesCount(t, m, "nfsdrop_volume_deliveries_total"); n != 6 {
		t.Errorf("deliveries: %d series, want volume × {delivered, deferred, refused} (6)", n)
	}
}

// A volume's gate and store report into its series: health, calls in
// flight, refusals, and each recipient's outcome and latency; the
// process-wide store metrics still count.
func TestVolumeMetricsFromGateAndStore(t *testing.T) {
	m := New()
	v := m.Volume("filer1")
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, ".mounted"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	g := fsgate.ForVolume(nil, root, ".mounted", fsgate.Options{Volume: "filer1", Observer: v, ProbeTimeout: time.Minute, ProbeInterval: time.Millisecond})
	no := false
	s, err := store.New(store.Options{MailRoot: root, MountMarker: ".mounted", Hostname: "mx.test", FS: g.FS(), Chown: &no, Observer: v})
	if err != nil {
		t.Fatal(err)
	}
	mb := store.Mailbox{Path: filepath.Join(root, "example.org", "alice", "Maildir"), UID: -1, GID: -1}
	if _, err := s.Deliver(mb, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, ".mounted")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Run(ctx)
	for g.Err() == nil { // the probe misses the marker
		time.Sleep(time.Millisecond)
	}
	_, err = s.Deliver(mb, strings.NewReader("Subject: y\r\n\r\nbody\r\n"))
	if failure.KindOf(err) != failure.Temporary || !fsgate.IsRefused(err) {
		t.Fatalf("delivery on a down volume: %v, want the gate's temporary refusal", err)
	}
	v.Delivery(failure.New(failure.NotFound, "lookup", "no such user", nil), time.Millisecond)
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"up", value(t, m, "nfsdrop_volume_up", "filer1", ""), 0},
		{"in flight", value(t, m, "nfsdrop_volume_calls_in_flight", "filer1", ""), 0},
		{"refused down", value(t, m, "nfsdrop_volume_calls_refused_total", "filer1", "down"), 1},
		{"delivered", value(t, m, "nfsdrop_volume_deliveries_total", "filer1", "delivered"), 1},
		{"deferred", value(t, m, "nfsdrop_volume_deliveries_total", "filer1", "deferred"), 1},
		{"refused", value(t, m, "nfsdrop_volume_deliveries_total", "filer1", "refused"), 1},
		{"latency observations", value(t, m, "nfsdrop_volume_delivery_seconds", "filer1", ""), 3},
		{"bytes stored (process-wide)", value(t, m, "nfsdrop_store_bytes_total", "", ""), float64(len("Subject: x\r\n\r\nbody\r\n"))},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// seriesCount is the number of series of the metric name.
func seriesCount(t *testing.T, m *Metrics, name string) int {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}

// value is the value of the series of name with volume (and, when not
// "", the other label's value): a gauge's or counter's value, a
// histogram's observation count.
func value(t *testing.T, m *Metrics, name, volume, other string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				switch {
				case l.GetName() == "volume" && l.GetValue() != volume:
					continue next
				case l.GetName() != "volume" && other != "" && l.GetValue() != other:
					continue next
				}
			}
			switch {
			case s.Gauge != nil:
				return s.Gauge.GetValue()
			case s.Counter != nil:
				return s.Counter.GetValue()
			case s.Histogram != nil:
				return float64(s.Histogram.GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s{volume=%q,%q}", name, volume, other)
	return 0
}
