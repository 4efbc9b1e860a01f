package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/nfsdrop/nfsdrop/internal/testenv"
)

var metricName = regexp.MustCompile(`\bnfsdrop_[a-z0-9_]+`)

// exported returns the metric names the program exports, with the series
// names histograms add.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	m := New()
	names := map[string]bool{}
	for _, n := range m.Names() {
		names[n] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			names[n+suffix] = true
		}
	}
	return names
}

func checkExprs(t *testing.T, where string, exprs []string) {
	t.Helper()
	names := exported(t)
	if len(exprs) == 0 {
		t.Fatalf("%s: no queries found", where)
	}
	for _, e := range exprs {
		used := metricName.FindAllString(e, -1)
		if len(used) == 0 {
			t.Errorf("%s: query %q uses no nfsdrop metric", where, e)
		}
		for _, n := range used {
			if !names[n] {
				t.Errorf("%s: query uses %s, which nfsdrop does not export", where, n)
			}
		}
	}
}

func TestGrafanaDashboardUsesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "contrib", "grafana", "nfsdrop.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	checkExprs(t, "grafana", exprs)
}

func TestAlertRulesParseAndUseExportedMetrics(t *testing.T) {
	path := filepath.Join(testenv.RepoRoot(), "contrib", "prometheus", "nfsdrop-alerts.yml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.UnmarshalStrict(data, &rules); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %+v lacks a name or severity", r)
			}
			if strings.Contains(r.Expr, "up{") {
				continue // Prometheus' own series
			}
			exprs = append(exprs, r.Expr)
		}
	}
	checkExprs(t, "alerts", exprs)
	// promtool, where installed, checks the PromQL itself.
	if promtool, err := testenv.LookPath("promtool"); err == nil {
		out, err := runCmd(promtool, "check", "rules", path)
		if err != nil {
			t.Fatalf("promtool check rules: %v\n%s", err, out)
		}
	}
}

// The dashboard shows every per-volume series (issue 16): health, calls in
// flight, refusals, deliveries by result and latency, by volume.
func TestGrafanaDashboardShowsVolumes(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "contrib", "grafana", "nfsdrop.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr         string `json:"expr"`
				LegendFormat string `json:"legendFormat"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range metricName.FindAllString(tg.Expr, -1) {
				if strings.HasPrefix(n, "nfsdrop_volume_") {
					shown[strings.TrimSuffix(n, "_bucket")] = true
					if !strings.Contains(tg.LegendFormat, "{{volume}}") {
						t.Errorf("query %q: its legend %q does not name the volume", tg.Expr, tg.LegendFormat)
					}
				}
			}
		}
	}
	for _, n := range New().Names() {
		if strings.HasPrefix(n, "nfsdrop_volume_") && !shown[n] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}
