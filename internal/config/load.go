package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is one problem with a configuration. Load, Parse and Validate return
// these, several joined with errors.Join; errors.As finds the first.
type Error struct {
	File    string // file name as given to Load or Parse; "" when none
	Line    int    // 1-based line in File; 0 when unknown or a default
	Col     int    // 1-based column; only for TOML syntax errors
	Key     string // dotted key such as "store.mail_root"; "" for syntax errors
	Default bool   // the key is not in the file: the value is the default
	Msg     string // the message after the location; it names the key
}

// Error returns "FILE:LINE: MSG", "FILE:LINE:COL: MSG" or, for a key that is
// not in the file, "FILE: MSG".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Col > 0 {
			fmt.Fprintf(&b, ":%d", e.Col)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// source remembers where a Config was read from, so that Validate can name
// lines. It is never modified after decode returns.
type source struct {
	file    string
	data    string
	keys    []toml.Key      // every key in the file, in file order
	defined map[string]bool // keys (dotted) present in the file
}

// keyError builds the error for a key, located in the file or marked as a
// default. c.src may be nil (a Config built in code): then only the key is
// named.
func (s *source) keyError(key, format string, args ...any) *Error {
	e := &Error{Key: key}
	msg := fmt.Sprintf(format, args...)
	if s == nil {
		e.Msg = "key " + key + ": " + msg
		return e
	}
	e.File = s.file
	if !s.defined[key] {
		e.Default = true
		e.Msg = "key " + key + " (default): " + msg
		return e
	}
	e.Line = s.line(strings.Split(key, "."))
	e.Msg = "key " + key + ": " + msg
	return e
}

// line returns the line of key k in the file, or 0. A table that is only
// implied (by "[a.b]" or "a.b = 1") has no line of its own: the line of its
// first key is used.
func (s *source) line(k toml.Key) int {
	if n := s.probe(k); n > 0 {
		return n
	}
	for _, kk := range s.keys {
		if len(kk) > len(k) && slicesEqual(kk[:len(k)], k) {
			if n := s.probe(kk); n > 0 {
				return n
			}
		}
	}
	return 0
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// probe makes the TOML decoder report the position of key k: toml v1.6.0 has
// no public accessor for key positions, but an error returned by an
// Unmarshaler comes back as a ParseError carrying the position of the key
// being decoded. So the file is decoded again into a struct type, built for
// the purpose, whose only field at path k always fails.
func (s *source) probe(k toml.Key) int {
	t := reflect.TypeFor[probe]()
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == "" || k[i] == "-" || strings.Contains(k[i], ",") {
			return 0 // cannot be expressed as a struct tag
		}
		t = reflect.StructOf([]reflect.StructField{{
			Name: "K",
			Type: t,
			Tag:  reflect.StructTag("toml:" + strconv.Quote(k[i])),
		}})
	}
	_, err := toml.Decode(s.data, reflect.New(t).Interface())
	var pe toml.ParseError
	if errors.As(err, &pe) && pe.LastKey == k.String() {
		return pe.Position.Line
	}
	return 0
}

type probe struct{}

func (probe) UnmarshalTOML(any) error { return errors.New("probe") }

// Load reads the configuration file at path: the values in the file are
// decoded over Default, unknown keys are refused, a relative
// userdb.passwd_file is made relative to the directory of path, and the
// result is validated. All problems found are returned together.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := decode(data, path)
	if err != nil {
		return nil, err
	}
	if p := c.UserDB.PasswdFile; p != "" && !filepath.IsAbs(p) {
		dir, err := filepath.Abs(filepath.Dir(path))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		c.UserDB.PasswdFile = filepath.Join(dir, p)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse is Load for a file already read: name is used in messages only, and
// a relative userdb.passwd_file is left as it is.
func Parse(data []byte, name string) (*Config, error) {
	c, err := decode(data, name)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decode decodes data over Default without validating it.
func decode(data []byte, name string) (*Config, error) {
	var raw map[string]any
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: name, Line: pe.Position.Line, Col: pe.Position.Col, Msg: "invalid TOML: " + pe.Message}
		}
		return nil, &Error{File: name, Msg: "invalid TOML: " + err.Error()}
	}
	src := &source{file: name, data: string(data), keys: md.Keys(), defined: make(map[string]bool)}
	for _, k := range src.keys {
		src.defined[k.String()] = true
	}

	// Check every key of the file against the schema before decoding: the
	// decoder stops at the first problem and matches keys without regard to
	// case, while this reports every problem, in file order.
	sch := schema()
	top := make(map[string]field)
	for _, f := range sch[0].fields {
		top[f.name] = f
	}
	sections := make(map[string]section)
	for _, s := range sch[1:] {
		sections[s.name] = s
	}
	var errs []error
	seen := make(map[string]bool)
	once := func(k toml.Key) bool {
		ks := k.String()
		if seen[ks] {
			return false
		}
		seen[ks] = true
		return true
	}
	for _, k := range src.keys {
		if f, ok := top[k[0]]; ok {
			if once(k[:1]) {
				errs = appendErr(errs, src.checkValue(f, raw[k[0]]))
			}
			continue
		}
		sec, ok := sections[k[0]]
		if !ok {
			if once(k[:1]) {
				errs = append(errs, src.unknown(sch, k[:1], raw[k[0]]))
			}
			continue
		}
		tbl, ok := raw[k[0]].(map[string]any)
		if !ok {
			if once(k[:1]) {
				errs = append(errs, src.keyError(k[0], "expected a table ([%s]), got %s", k[0], describe(raw[k[0]])))
			}
			continue
		}
		if len(k) == 1 {
			continue
		}
		f, ok := sec.field(k[1])
		if !ok {
			if once(k[:2]) {
				errs = append(errs, src.unknown(sch, k[:2], tbl[k[1]]))
			}
			continue
		}
		if once(k[:2]) {
			errs = appendErr(errs, src.checkValue(f, tbl[k[1]]))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	c := Default()
	md, err = toml.Decode(string(data), &c)
	if err != nil { // not expected after the checks above
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: name, Line: pe.Position.Line, Key: pe.LastKey, Msg: "key " + pe.LastKey + ": " + pe.Message}
		}
		return nil, &Error{File: name, Msg: err.Error()}
	}
	for _, k := range md.Undecoded() { // not expected either
		errs = append(errs, src.unknown(sch, k, nil))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	defaultNewMailboxes(&c, raw)
	c.src = src
	return &c, nil
}

func appendErr(errs []error, e *Error) []error {
	if e != nil {
		errs = append(errs, e)
	}
	return errs
}

func (s section) field(name string) (field, bool) {
	for _, f := range s.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// checkValue checks that the TOML value v of a key present in the file has
// the type of f, and parses sizes and durations.
func (s *source) checkValue(f field, v any) *Error {
	bad := func(want string) *Error {
		return s.keyError(f.path, "expected %s, got %s", want, describe(v))
	}
	switch f.kind {
	case kindString:
		if _, ok := v.(string); !ok {
			return bad("a string")
		}
	case kindBool:
		if _, ok := v.(bool); !ok {
			return bad("a boolean (true or false)")
		}
	case kindInt:
		n, ok := v.(int64)
		if !ok {
			return bad("an integer")
		}
		if reflect.New(fieldType(f)).Elem().OverflowInt(n) {
			return s.keyError(f.path, "%d is out of range", n)
		}
	case kindStrings:
		a, ok := v.([]any)
		if !ok {
			return bad("an array of strings")
		}
		for i, e := range a {
			if _, ok := e.(string); !ok {
				return s.keyError(f.path, "element %d: expected a string, got %s", i+1, describe(e))
			}
		}
	case kindSize:
		switch v := v.(type) {
		case int64:
			if v < 0 {
				return s.keyError(f.path, "invalid size %d: must not be negative", v)
			}
		case string:
			if _, err := ParseByteSize(v); err != nil {
				return s.keyError(f.path, "%v", err)
			}
		default:
			return bad(`a size (integer bytes or a string like "50M")`)
		}
	case kindTables:
		tables, ok := rawTables(v)
		if !ok {
			return bad("an array of tables ([[" + f.path + "]])")
		}
		for i, t := range tables {
			if e := s.checkTable(f, i, t); e != nil {
				return e
			}
		}
	case kindDuration:
		str, ok := v.(string)
		if !ok {
			return bad(`a duration string like "5m"`)
		}
		if _, err := ParseDuration(str); err != nil {
			return s.keyError(f.path, "%v", err)
		}
	}
	return nil
}

// rawTables returns the tables of an array of tables as decoded into a map:
// [[a.b]] decodes as []map[string]any, an inline array of tables as []any.
func rawTables(v any) ([]map[string]any, bool) {
	switch v := v.(type) {
	case []map[string]any:
		return v, true
	case []any:
		out := make([]map[string]any, len(v))
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			out[i] = m
		}
		return out, true
	}
	return nil, false
}

// checkTable checks the keys of table i of the array of tables f.
func (s *source) checkTable(f field, i int, t map[string]any) *Error {
	names := make([]string, 0, len(t))
	for k := range t {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		ef, ok := f.elemField(k)
		if !ok {
			return s.elemError(f.path, i, k, "unknown key %q", f.path+"."+k)
		}
		if e := s.checkValue(ef, t[k]); e != nil {
			// Locate the problem in table i, not in the first table.
			return s.elemError(f.path, i, k, "%s", strings.TrimPrefix(e.Msg, "key "+ef.path+": "))
		}
	}
	return nil
}

// elemError builds the error for key (a name in the tables of the array of
// tables at path) in table i, 0-based: "key store.volumes.path (table 2):
// ...". The line is that of the key in table i, or of the table's header
// when the key is not there.
func (s *source) elemError(path string, i int, key, format string, args ...any) *Error {
	e := &Error{Key: path + "." + key}
	e.Msg = fmt.Sprintf("key %s (table %d): %s", e.Key, i+1, fmt.Sprintf(format, args...))
	if s != nil {
		e.File = s.file
		e.Line = s.elemLine(path, i, key)
	}
	return e
}

// elemLine finds the line of key in table i of the array of tables at
// path ("[[store.volumes]]"), or of the table's header; 0 when the tables
// are not written with headers. The decoder does not report positions of
// keys inside arrays of tables, so this reads the text: headers and
// "key =" lines, which is all a configuration file uses.
func (s *source) elemLine(path string, i int, key string) int {
	header := "[[" + path + "]]"
	n, headerLine := -1, 0
	for ln, line := range strings.Split(s.data, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			if strings.ReplaceAll(strings.SplitN(t, "#", 2)[0], " ", "") == header {
				n++
				if n == i {
					headerLine = ln + 1
				}
			} else if n >= i {
				break
			}
			continue
		}
		if n != i {
			continue
		}
		if name, _, ok := strings.Cut(t, "="); ok && strings.Trim(strings.TrimSpace(name), `"`) == key {
			return ln + 1
		}
	}
	return headerLine
}

func fieldType(f field) reflect.Type { return f.typ }

// describe names the TOML type of a decoded value, with the value when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			return "a string"
		}
		return "string " + strconv.Quote(v)
	case int64:
		return "integer " + strconv.FormatInt(v, 10)
	case float64:
		return "float " + strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case nil:
		return "nothing"
	}
	return "a date/time"
}

// unknown builds the error for key k, which is not in the schema, with a
// suggestion when one is close.
func (s *source) unknown(sch []section, k toml.Key, v any) *Error {
	what := "key"
	if _, ok := v.(map[string]any); ok && len(k) == 1 {
		what = "section"
	}
	e := &Error{File: s.file, Line: s.line(k), Key: k.String()}
	e.Msg = fmt.Sprintf("unknown %s %q", what, k.String())
	if hint := suggest(sch, k); hint != "" {
		e.Msg += " (" + hint + ")"
	}
	return e
}

// suggest proposes a known key for an unknown key k: one spelt nearly the
// same in the same table, or one with the same name in another table (a
// top-level key written after a [section] header lands in that section).
func suggest(sch []section, k toml.Key) string {
	last := k[len(k)-1]
	var parent string
	if len(k) == 2 {
		parent = k[0]
	} else if len(k) > 2 {
		return ""
	}
	best, bestDist := "", 3
	for _, sec := range sch {
		var names []string
		if sec.name == parent {
			for _, f := range sec.fields {
				names = append(names, f.name)
			}
		}
		if parent == "" && sec.name != "" {
			names = append(names, sec.name)
		}
		for _, n := range names {
			d := distance(strings.ToLower(last), strings.ToLower(n))
			if d > 0 && d > len(n)/3 {
				continue
			}
			if d < bestDist {
				best, bestDist = joinKey(parent, n), d
			}
		}
	}
	if best != "" {
		if bestDist == 0 {
			return fmt.Sprintf("keys are case-sensitive: did you mean %q?", best)
		}
		return fmt.Sprintf("did you mean %q?", best)
	}
	for _, sec := range sch {
		for _, f := range sec.fields {
			if f.name != last || sec.name == parent {
				continue
			}
			if sec.name == "" {
				return fmt.Sprintf("did you mean %q? Top-level keys must come before the first [section]", f.path)
			}
			return fmt.Sprintf("did you mean %q in [%s]?", f.name, sec.name)
		}
	}
	return ""
}

func joinKey(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// defaultNewMailboxes sets new_mailboxes, true by default, in the
// [[store.volumes]] tables that do not set it: the decoder starts each
// table from the zero value.
func defaultNewMailboxes(c *Config, raw map[string]any) {
	if len(c.Store.Volumes) == 0 {
		c.Store.Volumes = nil // "volumes = []" is the default, not a change
		return
	}
	st, _ := raw["store"].(map[string]any)
	tables, _ := rawTables(st["volumes"])
	for i := range c.Store.Volumes {
		if i < len(tables) {
			if _, set := tables[i]["new_mailboxes"]; set {
				continue
			}
		}
		c.Store.Volumes[i].NewMailboxes = defaultElem(volumesField()).Interface().(Volume).NewMailboxes
	}
}

// volumesField is the schema field of store.volumes.
func volumesField() field {
	for _, sec := range schema() {
		if f, ok := sec.field("volumes"); ok && sec.name == "store" {
			return f
		}
	}
	panic("config: no store.volumes in the schema")
}
