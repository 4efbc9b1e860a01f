// Package lab runs nfsdrop on real Linux NFS clients: small virtual machines
// (qemu with software emulation, Debian's kernel, a busybox initramfs) that
// mount one NFSv3 or NFSv4.1 export served by nfs-ganesha, all on a private bridge in
// network namespaces with addresses in 127.77.0.0/24.
//
// The pieces, in the order a lab is built:
//
//   - assets.go: the kernel, its modules and busybox, taken from Debian's
//     packages without installing them and cached by kernel version; the
//     initramfs with its /init (init.sh) is assembled per lab.
//   - net.go: the switch namespace (bridge br0, one tap device per VM), the
//     NFS server's namespace (127.77.0.9) and a client namespace (127.77.0.5).
//   - ganesha.go: rpcbind and ganesha.nfsd exporting a host directory.
//   - vm.go: the machines (mx1.test at 127.77.0.11, mx2.test at .12, ...),
//     each running a script from the export, controlled over the network.
//   - haproxy.go, postfix.go: a load balancer and an MTA in the client
//     namespace, for scaleout.go: lmtpd and pop3d on every VM behind
//     HAProxy, Postfix delivering through it, the loadcheck load generator
//     and checker, faults on a schedule (RunScaleOut), and the rate and
//     NFS-call measurements of scaling.go (RunScaling).
//
// Everything a lab starts is stopped by PID and every namespace it made is
// deleted by name in Close; a state file under /run/nfsdrop-lab lets
// CleanStale remove what a killed run left behind.
//
// Only root can build a lab. Traffic stays on the lab's own bridge and
// namespaces: the VMs, the NFS server and the client namespace reach no
// other address.
package lab
