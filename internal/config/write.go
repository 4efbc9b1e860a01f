package config

import (
	"bufio"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
)

// WriteTOML writes the effective configuration as TOML: every key, defaults
// included, in the order of docs/config.md. When c was read from a file, keys
// that the file does not set are marked with a "# default" comment. The
// output loads again with Load or Parse and gives the same values.
func (c *Config) WriteTOML(w io.Writer) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("# nfsdrop effective configuration: every key, defaults included.\n")
	if c.src != nil && c.src.file != "" {
		fmt.Fprintf(bw, "# Read from %q.\n", c.src.file)
	}
	for _, sec := range schema() {
		if sec.name != "" {
			fmt.Fprintf(bw, "\n[%s]\n", sec.name)
		} else if len(sec.fields) > 0 {
			bw.WriteString("\n")
		}
		var tables []field
		for _, f := range sec.fields {
			if f.kind == kindTables {
				tables = append(tables, f) // after the plain keys: a [[header]] ends them
				continue
			}
			fmt.Fprintf(bw, "%s = %s", f.name, tomlValue(c.value(f)))
			if c.src != nil && !c.src.defined[f.path] {
				bw.WriteString("  # default")
			}
			bw.WriteString("\n")
		}
		for _, f := range tables {
			list := c.value(f)
			if list.Len() == 0 {
				fmt.Fprintf(bw, "%s = []", f.name)
				if c.src != nil && !c.src.defined[f.path] {
					bw.WriteString("  # default")
				}
				bw.WriteString("\n")
			}
			for i := range list.Len() {
				fmt.Fprintf(bw, "\n[[%s]]\n", f.path)
				for _, ef := range f.elem {
					fmt.Fprintf(bw, "%s = %s\n", ef.name, tomlValue(list.Index(i).FieldByIndex(ef.index)))
				}
			}
		}
	}
	return bw.Flush()
}

// defaultElem is the value of a table of the array of tables f that sets
// no key.
func defaultElem(f field) reflect.Value {
	if f.typ.Elem() == reflect.TypeFor[Volume]() {
		return reflect.ValueOf(Volume{NewMailboxes: true})
	}
	return reflect.New(f.typ.Elem()).Elem()
}

// tomlValue formats a key's value as a TOML literal.
func tomlValue(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case ByteSize:
		return tomlString(x.String())
	case Duration:
		return tomlString(x.String())
	}
	switch v.Kind() {
	case reflect.String:
		return tomlString(v.String())
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Struct:
		t := v.Type()
		parts := make([]string, 0, t.NumField())
		for i := range t.NumField() {
			if sf := t.Field(i); sf.IsExported() {
				parts = append(parts, tomlName(sf)+" = "+tomlValue(v.Field(i)))
			}
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = tomlValue(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	panic("config: cannot format " + v.Type().String())
}

// tomlString quotes s as a TOML basic string. Invalid UTF-8 is replaced, as
// TOML files must be UTF-8.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
