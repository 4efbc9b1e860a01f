package pop3

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/nfsdrop/nfsdrop/store/failure"
)

// plaintextAllowed reports whether a password may be sent on this
// connection: over TLS, from a trusted network, or when the administrator
// allowed it everywhere (RFC 2595 section 6: a server should refuse
// passwords in the clear unless configured otherwise).
func (ss *session) plaintextAllowed() bool {
	return ss.tls || ss.s.opts.AllowPlaintext || inNetworks(ss.remote.Addr(), ss.s.opts.TrustedNetworks)
}

func (ss *session) stlsOffered() bool {
	return !ss.tls && ss.s.opts.TLSConfig != nil && !ss.s.opts.DisableSTLS && ss.state == stateAuthorization
}

// refusePlaintext answers a password command on a connection where
// passwords are not accepted, pointing to STLS when there is one (the
// wording is Dovecot's, which clients know).
func (ss *session) refusePlaintext() error {
	msg := replyPlaintext
	if ss.stlsOffered() {
		msg += ", use STLS"
	}
	ss.line(msg)
	if ss.protocolErrors++; ss.protocolErrors >= maxProtocolErrors {
		return errProtocolErrors
	}
	return nil
}

// userCmd is USER (RFC 1939 section 7). The reply is +OK whatever the
// name: whether the user exists is not for a client to learn.
func (ss *session) userCmd(cmd command) error {
	if !ss.plaintextAllowed() {
		return ss.refusePlaintext()
	}
	if len(cmd.args) != 1 {
		return ss.fail("syntax error")
	}
	ss.pendingUser = cmd.args[0]
	ss.line("+OK")
	return nil
}

// passCmd is PASS. The password is the rest of the line, spaces included
// (RFC 1939 section 7 allows a server to do this, and passwords have
// spaces).
func (ss *session) passCmd(cmd command) error {
	if !ss.plaintextAllowed() {
		return ss.refusePlaintext()
	}
	if ss.pendingUser == "" {
		return ss.fail("USER first")
	}
	if cmd.rest == "" {
		return ss.fail("syntax error")
	}
	user := ss.pendingUser
	ss.pendingUser = "" // a failed PASS needs a new USER (RFC 1939 section 7)
	return ss.loginDone(ss.authenticate(user, cmd.rest))
}

// authCmd is AUTH (RFC 5034) with PLAIN (RFC 4616) and LOGIN
// (draft-murchison-sasl-login, which Outlook and older clients use).
func (ss *session) authCmd(cmd command) error {
	if len(cmd.args) == 0 {
		// AUTH without a mechanism lists them (RFC 1734 behaviour, which
		// RFC 5034 dropped but Outlook still uses).
		ss.line("+OK")
		if ss.plaintextAllowed() {
			ss.lines("PLAIN", "LOGIN")
		}
		ss.line(".")
		return nil
	}
	if len(cmd.args) > 2 {
		return ss.fail("syntax error")
	}
	var srv sasl.Server
	mech := cmd.args[0]
	switch {
	case asciiEqualFold([]byte(mech), sasl.Plain):
		mech = sasl.Plain
	case asciiEqualFold([]byte(mech), sasl.Login):
		mech = sasl.Login
	}
	switch mech {
	case sasl.Plain:
		srv = sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				// Logging in as one user to act as another is not offered.
				ss.tryUser = username
				return failure.New(failure.BadInput, "sasl plain", "authorization identity not supported", nil)
			}
			return ss.authenticate(username, password)
		})
	case sasl.Login:
		srv = &loginServer{authenticate: ss.authenticate}
	default:
		return ss.fail("unsupported authentication mechanism")
	}
	if !ss.plaintextAllowed() {
		return ss.refusePlaintext()
	}

	// RFC 5034 section 4: an initial response may follow the mechanism;
	// "=" is an empty one.
	var resp []byte
	if len(cmd.args) == 2 {
		var ok bool
		if resp, ok = decodeSASL(cmd.args[1]); !ok {
			return ss.fail("invalid base64 data")
		}
	}
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			var fe *failure.Error
			if !errors.As(err, &fe) {
				// Not the Backend's answer: the mechanism could not parse
				// the response. As far as the client is told, a failed
				// login like any other.
				err = failure.New(failure.BadInput, "sasl", "malformed response", err)
			}
			return ss.loginDone(err)
		}
		if done {
			return ss.loginDone(nil)
		}
		ss.line("+ " + base64.StdEncoding.EncodeToString(challenge))
		if err := ss.flush(); err != nil {
			return err
		}
		line, err := ss.readLine()
		if err != nil {
			return err
		}
		if len(line) == 1 && line[0] == '*' {
			return ss.fail("authentication cancelled") // RFC 5034 section 4
		}
		var ok bool
		if resp, ok = decodeSASL(string(line)); !ok {
			return ss.fail("invalid base64 data")
		}
	}
}

// decodeSASL decodes a SASL response; "=" is the empty initial response
// (RFC 5034 section 4). Padding may be left out, as some clients do.
func decodeSASL(s string) ([]byte, bool) {
	if s == "=" {
		return []byte{}, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		if b, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return nil, false
		}
	}
	if b == nil {
		b = []byte{} // go-sasl tells "no response" (nil) from an empty one
	}
	return b, true
}

// authenticate asks the Backend. On success the session has its mailbox;
// loginDone answers.
func (ss *session) authenticate(username, password string) error {
	ss.tryUser = username
	ctx, cancel := context.WithTimeout(ss.s.ctx, ss.s.opts.IdleTimeout)
	defer cancel()
	mb, err := ss.s.backend.Login(ctx, Client{Remote: ss.remote, TLS: ss.tls, Session: ss.id}, username, password)
	if err != nil {
		if mb != nil {
			mb.Close()
		}
		return err
	}
	if mb == nil {
		return failure.Temp("login", "", errors.New("backend returned no mailbox"))
	}
	ss.enterTransaction(mb)
	return nil
}

// loginDone answers a login attempt. The log gets the user name and the
// reason, never the password.
func (ss *session) loginDone(err error) error {
	ss.s.opts.Observer.Login(loginResult(err))
	if err == nil {
		ss.line("+OK Logged in, " + strconv.Itoa(ss.count) + " messages (" + strconv.FormatInt(ss.size, 10) + " octets)")
		return nil
	}
	reply, bad := loginReply(err)
	attrs := []any{"session", ss.id, "user", ss.tryUser, "remote", ss.remoteStr, "tls", ss.tls,
		"kind", failure.KindOf(err).String(), "err", err.Error()}
	if bad {
		ss.s.log.Info("pop3 login failed", attrs...)
	} else {
		ss.s.log.Warn("pop3 login failed", attrs...)
	}
	ss.tryUser = ""
	if !bad {
		ss.line(reply)
		return nil
	}
	// The pause slows down password guessing; the same pause for every
	// kind of bad credentials keeps the timing from telling them apart.
	ss.authFailures++
	if d := ss.s.opts.AuthFailDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ss.s.ctx.Done():
			t.Stop()
		}
	}
	if ss.authFailures >= ss.s.opts.MaxAuthFailures {
		ss.line(replyTooManyFails)
		return errAuthFailures
	}
	ss.line(reply)
	return nil
}

// stls is STLS (RFC 2595 section 4). What the client sent after STLS in
// the clear is thrown away, not read as commands inside TLS: a man in the
// middle could have added it (the STARTTLS command injection of
// CVE-2011-0411). Everything learned before TLS (the USER name) is
// forgotten as well.
func (ss *session) stls(cmd command) error {
	if !ss.stlsOffered() {
		return ss.fail("STLS not available")
	}
	if len(cmd.args) != 0 {
		return ss.fail("syntax error")
	}
	cfg := ss.s.opts.TLSConfig()
	if cfg == nil {
		ss.line("-ERR [SYS/TEMP] TLS not available")
		return nil
	}
	ss.line("+OK Begin TLS negotiation")
	if err := ss.flush(); err != nil {
		return err
	}
	ss.r.Discard(ss.r.Buffered())
	ss.pendingUser = ""
	return ss.startTLS(cfg)
}

// loginServer is the server side of SASL LOGIN, which go-sasl no longer
// provides. The username comes first (in the initial response, or after
// a "Username:" challenge), then the password.
type loginServer struct {
	step         int
	username     string
	authenticate func(username, password string) error
}

func (a *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch a.step {
	case 0:
		if response == nil {
			a.step = 1
			return []byte("Username:"), false, nil
		}
		a.username, a.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		a.username, a.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		a.step = 3
		return nil, true, a.authenticate(a.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// loginResult names a login's outcome for metrics (a bounded set).
func loginResult(err error) string {
	if err == nil {
		return "ok"
	}
	if failure.UserFault(err) {
		return "auth_failed"
	}
	switch failure.KindOf(err) {
	case failure.InUse:
		return "in_use"
	case failure.Permanent:
		return "perm_failure"
	}
	return "temp_failure"
}
