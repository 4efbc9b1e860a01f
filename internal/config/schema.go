package config

import (
	"fmt"
	"reflect"
	"strings"
)

// kind is the kind of value a key holds, as far as the file is concerned.
type kind int

const (
	kindString kind = iota
	kindInt
	kindBool
	kindStrings
	kindSize
	kindDuration
	kindTables // an array of tables ([[a.b]]); its keys are in field.elem
)

// field is one key of the schema, derived by reflection from Config.
type field struct {
	path    string // dotted key: "hostname", "store.mail_root"
	section string // "" at the top level
	name    string // last component: "mail_root"
	index   []int  // field index path in Config
	kind    kind
	goType  string // name of the Go struct declaring the field: "Store"
	goName  string // Go field name: "MailRoot"
	typ     reflect.Type
	// elem lists the keys of each table of a kindTables field: their path
	// is "store.volumes.name", their index is into the element struct.
	elem []field
}

// section is a table of the schema; the top level is the section named "".
type section struct {
	name   string
	goName string // Go field name in Config ("Store"); "" for the top level
	goType string // Go type name ("Store"); "Config" for the top level
	fields []field
}

// schema describes every key of the file, in the order of the struct fields,
// the top level first. It is derived from Config on each call (it is cheap),
// so the package keeps no mutable state.
func schema() []section {
	ct := reflect.TypeFor[Config]()
	top := section{goType: ct.Name()}
	var sections []section
	for i := range ct.NumField() {
		sf := ct.Field(i)
		if !sf.IsExported() {
			continue
		}
		name := tomlName(sf)
		if sf.Type.Kind() == reflect.Struct {
			sec := section{name: name, goName: sf.Name, goType: sf.Type.Name()}
			for j := range sf.Type.NumField() {
				kf := sf.Type.Field(j)
				if !kf.IsExported() {
					continue
				}
				sec.fields = append(sec.fields, newField(name, kf, []int{i, j}, sf.Type.Name()))
			}
			sections = append(sections, sec)
			continue
		}
		top.fields = append(top.fields, newField("", sf, []int{i}, ct.Name()))
	}
	return append([]section{top}, sections...)
}

func tomlName(sf reflect.StructField) string {
	name, _, _ := strings.Cut(sf.Tag.Get("toml"), ",")
	if name == "" || name == "-" {
		panic(fmt.Sprintf("config: field %s has no toml tag", sf.Name))
	}
	return name
}

func newField(sec string, sf reflect.StructField, index []int, goType string) field {
	f := field{section: sec, name: tomlName(sf), index: index, goType: goType, goName: sf.Name, typ: sf.Type}
	f.path = f.name
	if sec != "" {
		f.path = sec + "." + f.name
	}
	switch t := sf.Type; {
	case t == reflect.TypeFor[ByteSize]():
		f.kind = kindSize
	case t == reflect.TypeFor[Duration]():
		f.kind = kindDuration
	case t.Kind() == reflect.String:
		f.kind = kindString
	case t.Kind() == reflect.Bool:
		f.kind = kindBool
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		f.kind = kindInt
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		f.kind = kindStrings
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		f.kind = kindTables
		et := t.Elem()
		for j := range et.NumField() {
			if ef := et.Field(j); ef.IsExported() {
				f.elem = append(f.elem, newField(f.path, ef, []int{j}, et.Name()))
			}
		}
	default:
		panic(fmt.Sprintf("config: field %s.%s has unsupported type %s", goType, sf.Name, t))
	}
	return f
}

// typeName is the type of a key as the documentation names it.
func (k kind) typeName() string {
	return [...]string{
		kindString:   "string",
		kindInt:      "integer",
		kindBool:     "boolean",
		kindStrings:  "array of strings",
		kindSize:     "size",
		kindDuration: "duration",
		kindTables:   "array of tables",
	}[k]
}

// elemField returns the key name of the tables of f.
func (f field) elemField(name string) (field, bool) {
	for _, e := range f.elem {
		if e.name == name {
			return e, true
		}
	}
	return field{}, false
}

// value returns the value of f in c.
func (c *Config) value(f field) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}
