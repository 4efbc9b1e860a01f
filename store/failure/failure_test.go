package failure

import (
	"errors"
	"fmt"
	"testing"
)

func TestUserFault(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{New(NotFound, "lookup", "no such user", nil), true},
		{New(Disabled, "lookup", "account disabled", nil), true},
		{New(BadInput, "lookup", "bad address", nil), true},
		{fmt.Errorf("wrapped: %w", New(NotFound, "auth", "", nil)), true},
		{Temp("ldap search", "unavailable", errors.New("timeout")), false},
		{Perm("open", "bad mailbox", nil), false},
		{&Error{Kind: OverQuota}, false},
		{New(InUse, "lock", "", nil), false},
		{errors.New("unforeseen"), false},
		{nil, false},
	} {
		if got := UserFault(tc.err); got != tc.want {
			t.Errorf("UserFault(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestKindOfNil: classifying a nil error answers Temporary instead of
// panicking (it dereferenced As(nil), which is nil).
func TestKindOfNil(t *testing.T) {
	if k := KindOf(nil); k != Temporary {
		t.Errorf("KindOf(nil) = %v, want Temporary", k)
	}
}
