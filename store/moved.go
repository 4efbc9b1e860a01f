package store

// MovedError says that a Maildir was moved to another volume, at the same
// path relative to that volume: whoever uses the mailbox should go there.
//
// This is the minimal definition the delivery and login paths follow; the
// online move (issue 16, store/move.go) is what produces it. When both
// exist, keep the one in move.go.
type MovedError struct {
	// Volume is the name of the volume the Maildir now lives on.
	Volume string
}

func (e *MovedError) Error() string { return "mailbox moved to volume " + e.Volume }
