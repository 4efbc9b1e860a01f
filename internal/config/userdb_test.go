package config

import (
	"fmt"
	"reflect"
	"testing"
)

// TestLDAPOptionsWireEveryKey: each [ldap] key reaches userdb.LDAPOptions,
// so a key added to the section cannot be left out of the conversion.
// Every key gets a value of its own; each value must turn up in the options.
func TestLDAPOptionsWireEveryKey(t *testing.T) {
	c := Default()
	sec := reflect.ValueOf(&c.LDAP).Elem()
	want := make(map[string]string) // value as found in the options → key
	for i := range sec.NumField() {
		f, name := sec.Field(i), sec.Type().Field(i).Name
		switch f.Kind() {
		case reflect.String:
			f.SetString("v" + name)
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Int, reflect.Int64: // ints and Durations
			f.SetInt(int64(1000 + i))
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"v" + name}))
		default:
			t.Fatalf("test needs updating: LDAP.%s is a %s", name, f.Kind())
		}
		want[repr(f)] = name
	}
	got := make(map[string]bool)
	var collect func(v reflect.Value)
	collect = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Struct:
			for i := range v.NumField() {
				collect(v.Field(i))
			}
		case reflect.Pointer, reflect.Interface, reflect.Func:
		default:
			got[repr(v)] = true
		}
	}
	collect(reflect.ValueOf(c.LDAPOptions()))
	for val, key := range want {
		if !got[val] {
			t.Errorf("LDAP.%s (%s) does not reach userdb.LDAPOptions", key, val)
		}
	}
}

// repr shows a value by its kind, so that a config.Duration and the
// time.Duration it becomes look the same.
func repr(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		return fmt.Sprint(v.Int())
	case reflect.Bool:
		return fmt.Sprint(v.Bool())
	}
	return fmt.Sprint(v.Interface())
}
