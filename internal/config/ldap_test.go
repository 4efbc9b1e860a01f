package config

import "testing"

// TestContribLDAPSection: the [ldap] section of the example configuration
// is valid as it stands once userdb.driver is "ldap".
func TestContribLDAPSection(t *testing.T) {
	c, err := Load(contribPath)
	if err != nil {
		t.Fatal(err)
	}
	c.UserDB.Driver = "ldap"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLDAPDefaultsValid(t *testing.T) {
	c := Default()
	c.UserDB.Driver = "ldap"
	c.LDAP.BaseDN = "dc=example,dc=org"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
