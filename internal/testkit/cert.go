package testkit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Cert is a self-signed ECDSA certificate for "localhost" and 127.0.0.1.
// It is its own CA, so a client that trusts it verifies the server.
type Cert struct {
	DER  []byte
	Key  *ecdsa.PrivateKey
	Leaf *x509.Certificate
}

// SelfSignedCert makes a certificate valid from an hour ago for a day.
func SelfSignedCert(t testing.TB) Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return Cert{DER: der, Key: key, Leaf: leaf}
}

// ServerConfig is a TLS server configuration presenting the certificate.
func (c Cert) ServerConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{c.DER}, PrivateKey: c.Key, Leaf: c.Leaf}}}
}

// ClientConfig is a TLS client configuration that trusts only this
// certificate and expects the name "localhost".
func (c Cert) ClientConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(c.Leaf)
	return &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

// WritePEM writes the certificate (cert.pem, 0644) and its key (key.pem,
// 0600) into dir, for daemons that read files.
func (c Cert) WritePEM(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	kder, err := x509.MarshalECPrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TLSConfigs makes a certificate and returns a server configuration with
// it and a client configuration that trusts it.
func TLSConfigs(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	c := SelfSignedCert(t)
	return c.ServerConfig(), c.ClientConfig()
}

// CertFiles makes a certificate and writes it and its key into dir.
func CertFiles(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	return SelfSignedCert(t).WritePEM(t, dir)
}
