package config

import (
	"bytes"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

const docPath = "../../docs/config.md"

func TestReferenceUpToDate(t *testing.T) {
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReferenceMarkdown(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("%v: run go generate ./internal/config", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("docs/config.md is out of date: run go generate ./internal/config")
	}
}

// TestDocCommentsStateDefaults keeps the prose of each field's doc comment in
// line with Default: the comment must say "Default X" (or "The default, X")
// with X the value as written in TOML.
func TestDocCommentsStateDefaults(t *testing.T) {
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := fieldDocs(src)
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	type keyDefault struct {
		f   field
		val reflect.Value
	}
	var keys []keyDefault
	for _, sec := range schema() {
		for _, f := range sec.fields {
			keys = append(keys, keyDefault{f, def.value(f)})
			for _, ef := range f.elem {
				keys = append(keys, keyDefault{ef, defaultElem(f).FieldByIndex(ef.index)})
			}
		}
	}
	for _, k := range keys {
		{
			f := k.f
			text := strings.Join(strings.Fields(docs[docKey{f.goType, f.goName}]), " ")
			if strings.Contains(text, "Required; no default.") && k.val.IsZero() {
				continue
			}
			lit := tomlValue(k.val)
			alts := []string{lit}
			if f.kind == kindSize || f.kind == kindDuration {
				alts = append(alts, strings.Trim(lit, `"`))
			}
			found := false
			for _, a := range alts {
				if strings.Contains(text, "Default "+a) || strings.Contains(text, "The default, "+a) {
					found = true
				}
			}
			if !found {
				t.Errorf("doc comment of %s.%s (key %s) does not state its default %s", f.goType, f.goName, f.path, lit)
			}
		}
	}
}

func TestReferenceMarkdownErrors(t *testing.T) {
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	// Remove the doc comment of one field: the generator must refuse.
	broken := regexp.MustCompile(`(\t//.*\n)+(\tMaxPerIP )`).ReplaceAllString(string(src), "$2")
	if broken == string(src) {
		t.Fatal("test needs updating: comment of MaxPerIP not found")
	}
	if _, err := ReferenceMarkdown([]byte(broken)); err == nil || !strings.Contains(err.Error(), "POP3.MaxPerIP") {
		t.Errorf("missing doc comment: err = %v", err)
	}
	if _, err := ReferenceMarkdown([]byte("package config\nfunc {")); err == nil {
		t.Error("bad Go source: no error")
	}
}
