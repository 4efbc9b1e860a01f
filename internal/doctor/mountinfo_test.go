package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Lines as Linux 6.x prints them for NFS mounts (the kernel shows
// acregmin..acdirmax only when they differ from the defaults, lookupcache
// only when it is not "all", and never actimeo).
const (
	nfs3Hard     = `412 27 0:55 / /srv/mail rw,relatime shared:220 - nfs fs1:/export/mail rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,mountvers=3,mountport=20048,mountproto=udp,lookupcache=pos,local_lock=none,addr=10.0.0.1`
	nfs42Soft    = `413 27 0:56 / /srv/mail rw,relatime shared:221 - nfs4 fs1:/mail rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,soft,proto=tcp,timeo=100,retrans=3,sec=sys,clientaddr=10.0.0.2,lookupcache=pos,local_lock=none,addr=10.0.0.1`
	nfs41NoCTO   = `414 27 0:57 / /srv/mail rw,relatime shared:222 - nfs4 fs1:/mail rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,nocto,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,lookupcache=pos,local_lock=none,addr=10.0.0.1`
	nfs42Default = `415 27 0:58 / /srv/mail rw,relatime shared:223 - nfs4 fs1:/mail rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,local_lock=none,addr=10.0.0.1`
	nfs3NoAC     = `416 27 0:59 / /srv/mail rw,relatime shared:224 - nfs fs1:/export/mail rw,sync,vers=3,rsize=1048576,wsize=1048576,namlen=255,acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,hard,noac,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.1,mountvers=3,mountport=20048,mountproto=udp,lookupcache=pos,local_lock=all,addr=10.0.0.1`
	nfs4LongAC   = `417 27 0:60 / /srv/mail rw,relatime shared:225 - nfs4 fs1:/mail rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,acregmax=600,acdirmin=600,acdirmax=600,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,lookupcache=none,local_lock=none,addr=10.0.0.1`
	nfs4Zero     = `418 27 0:61 / /srv/mail rw,relatime - nfs4 fs1:/mail rw,vers=4.2,actimeo=0,hard,softerr,proto=tcp`
	nfs4RO       = `419 27 0:62 / /srv/mail ro,relatime - nfs4 fs1:/mail ro,vers=4.2,hard,proto=tcp,lookupcache=pos`
	localRoot    = `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard`
	// nfs41Lab is a lab VM's mount (contrib/lab, -nfs 4.1 with the
	// options docs/nfs.md recommends), as its /proc/self/mountinfo shows it.
	nfs41Lab = `27 1 0:23 / /mnt/lab rw,noatime - nfs4 127.77.0.9:/var/tmp/nfsdrop-lab-d7460f-3103312241/export rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,acregmax=3,acdirmin=3,acdirmax=3,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=127.77.0.11,lookupcache=pos,local_lock=none,addr=127.77.0.9`
	nfs40    = `420 27 0:63 / /srv/mail rw,noatime - nfs4 fs1:/mail rw,vers=4.0,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.2,lookupcache=pos,local_lock=none,addr=10.0.0.1`
	nfs4Bare = `421 27 0:64 / /srv/mail rw - nfs4 fs1:/mail rw,hard,proto=tcp,lookupcache=pos`
)

func parseOne(t *testing.T, line string) Mount {
	t.Helper()
	ms, err := ParseMountInfo(strings.NewReader(line + "\n"))
	if err != nil || len(ms) != 1 {
		t.Fatalf("ParseMountInfo(%q) = %v, %v", line, ms, err)
	}
	return ms[0]
}

func statuses(rows []Result) map[string]Status {
	m := map[string]Status{}
	for _, r := range rows {
		m[r.Check] = r.Status
	}
	return m
}

func TestCheckNFS(t *testing.T) {
	cases := []struct {
		name   string
		line   string
		want   map[string]Status
		detail map[string]string // substrings expected in the detail
	}{
		{"v3 hard", nfs3Hard,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFS version 3, fs1:/export/mail on /srv/mail", "nfs-hard": "timeo=600 retrans=2", "nfs-attrcache": "acregmin=3 acregmax=60 acdirmin=30 acdirmax=60"}},
		{"v3 note", nfs3Hard,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFSv3: exclusive create with a verifier"}},
		{"v4.1 lab", nfs41Lab,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFS version 4.1, 127.77.0.9:", "nfs-attrcache": "acregmin=3 acregmax=3 acdirmin=3 acdirmax=3", "nfs-lookupcache": "lookupcache=positive"}},
		{"v4.1 sessions", nfs41Lab,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFSv4.1: sessions (a retransmitted call is answered from the server's reply cache, exactly once)"}},
		{"v4.2 client identity", nfs42Default,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": WARN},
			map[string]string{"filesystem": "its own NFSv4 client identity"}},
		{"v4.0 has no sessions", nfs40,
			map[string]Status{"filesystem": WARN, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFSv4.0 has no sessions"}},
		{"v4 without vers=", nfs4Bare,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFSv4 (minor version not shown)"}},
		{"v4.2 soft", nfs42Soft,
			map[string]Status{"filesystem": OK, "nfs-hard": FAIL, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "NFS version 4.2", "nfs-hard": "soft mount (timeo=100 retrans=3)"}},
		{"nocto", nfs41NoCTO,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": FAIL, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"nfs-cto": "nocto"}},
		{"lookupcache=all (default)", nfs42Default,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": WARN},
			map[string]string{"nfs-lookupcache": "lookupcache=all (the default)"}},
		{"noac", nfs3NoAC,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": WARN, "nfs-lookupcache": OK},
			map[string]string{"nfs-attrcache": "noac", "filesystem": "sync: every write"}},
		{"long attribute cache", nfs4LongAC,
			map[string]Status{"filesystem": OK, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"nfs-attrcache": "up to 600 s late", "nfs-lookupcache": "lookupcache=none"}},
		{"actimeo=0, softerr", nfs4Zero,
			map[string]Status{"filesystem": OK, "nfs-hard": FAIL, "nfs-cto": OK, "nfs-attrcache": WARN, "nfs-lookupcache": OK},
			map[string]string{"nfs-hard": "softerr", "nfs-attrcache": "caching is off", "nfs-lookupcache": "caching off"}},
		{"read-only", nfs4RO,
			map[string]Status{"filesystem": FAIL, "nfs-hard": OK, "nfs-cto": OK, "nfs-attrcache": OK, "nfs-lookupcache": OK},
			map[string]string{"filesystem": "read-only"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := parseOne(t, tc.line)
			if !m.IsNFS() {
				t.Fatalf("%s: not NFS", m.FSType)
			}
			rows := CheckFilesystem(m, true, "/srv/mail/x")
			got := statuses(rows)
			if len(got) != len(tc.want) {
				t.Errorf("rows %v, want %v", got, tc.want)
			}
			for k, want := range tc.want {
				if got[k] != want {
					t.Errorf("%s = %s, want %s", k, got[k], want)
				}
			}
			for _, r := range rows {
				if sub, ok := tc.detail[r.Check]; ok && !strings.Contains(r.Detail, sub) {
					t.Errorf("%s detail %q lacks %q", r.Check, r.Detail, sub)
				}
				if r.Status != OK && r.Fix == "" {
					t.Errorf("%s is %s without a fix", r.Check, r.Status)
				}
			}
		})
	}
}

func TestCheckLocalFilesystems(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Status
		sub  string
	}{
		{localRoot, OK, "local filesystem ext4 (/dev/vda on /): fine for one machine; several machines need a shared NFS mount"},
		{`50 27 0:40 / /srv/mail rw,relatime - xfs /dev/sdb1 rw,attr2`, OK, "local filesystem xfs"},
		{`51 27 0:41 / /srv/mail ro,relatime - tmpfs tmpfs ro,size=1024k`, FAIL, "read-only"},
		{`52 27 0:42 / /srv/mail rw,relatime - cifs //fs/mail rw,vers=3.1.1`, WARN, "not NFS"},
		{`53 27 0:43 / /srv/mail rw,relatime - fuse.sshfs host:/mail rw`, WARN, "not NFS"},
	} {
		rows := CheckFilesystem(parseOne(t, tc.line), true, "/srv/mail")
		if len(rows) != 1 || rows[0].Status != tc.want || !strings.Contains(rows[0].Detail, tc.sub) {
			t.Errorf("%s:\n got %+v\nwant %s with %q", tc.line, rows, tc.want, tc.sub)
		}
	}
	if rows := CheckFilesystem(Mount{}, false, "/x"); rows[0].Status != WARN {
		t.Errorf("no mount: %+v", rows)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := localRoot + "\n" +
		`60 27 0:70 /exports/a\040b /srv/mail\040store rw,nosuid master:3 shared:9 - nfs4 fs1:/exports/a\040b rw,vers=4.2,hard` + "\n" +
		`61 60 0:71 / /srv/mail\040store/sub\134dir rw - tmpfs tmp\011fs rw` + "\n"
	ms, err := ParseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("%d mounts", len(ms))
	}
	m := ms[1]
	if m.ID != 60 || m.Parent != 27 || m.Dev != "0:70" || m.Root != "/exports/a b" || m.MountPoint != "/srv/mail store" ||
		m.FSType != "nfs4" || m.Source != "fs1:/exports/a b" || !m.Has("hard") || !m.Has("nosuid") {
		t.Errorf("parsed %+v", m)
	}
	if v, ok := m.Option("vers"); !ok || v != "4.2" {
		t.Errorf("vers = %q %v", v, ok)
	}
	if ms[2].MountPoint != `/srv/mail store/sub\dir` || ms[2].Source != "tmp\tfs" {
		t.Errorf("escapes: %q %q", ms[2].MountPoint, ms[2].Source)
	}
	if _, err := ParseMountInfo(strings.NewReader("1 2 3\n")); err == nil {
		t.Error("a short line parsed")
	}
	if _, err := ParseMountInfo(strings.NewReader("1 2 0:1 / / rw no-separator ext4 x rw\n")); err == nil {
		t.Error("a line without '-' parsed")
	}
}

func TestFindMount(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(localRoot + "\n" +
		`60 27 0:70 / /srv/mail\040store rw - nfs4 fs1:/a rw,vers=4.2` + "\n" +
		`61 27 0:71 / /srv/mail rw - nfs fs1:/b rw,vers=3` + "\n" +
		`62 27 0:72 / /srv/mail rw - nfs4 fs2:/c rw,vers=4.1` + "\n" + // on top of 61
		`63 27 0:73 / /srv/mailx rw - tmpfs tmpfs rw` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/":                        27,
		"/var/mail":                27,
		"/srv/mail":                62,
		"/srv/mail/":               62,
		"/srv/mail/example.org/u":  62,
		"/srv/mail store/x":        60,
		"/srv/mailx/y":             63,
		"/srv/mailbox/not-a-mount": 27,
	} {
		m, ok := FindMount(ms, path)
		if !ok || m.ID != want {
			t.Errorf("FindMount(%q) = %d %v, want %d", path, m.ID, ok, want)
		}
	}
	if _, ok := FindMount(nil, "/x"); ok {
		t.Error("found a mount in an empty table")
	}
}

func TestRealPath(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	base, _ := filepath.EvalSymlinks(dir)
	if got, want := RealPath(filepath.Join(dir, "link", "missing", "deeper")), filepath.Join(base, "real", "missing", "deeper"); got != want {
		t.Errorf("RealPath = %q, want %q", got, want)
	}
}
