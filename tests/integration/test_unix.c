/* Unix domain sockets (unix:/path, unix:@name) against the real binary with two workers sharing
 * one listening socket: 64 MiB each way at once, byte for byte, unix->TCP, TCP->unix and
 * unix->unix (1 MiB for an abstract name); a stale socket file left by a killed proxy replaced
 * and served; a live one and a regular file refused with exit 1 and left alone; the file's mode
 * (config file, command line, the 0666 default, whatever the umask); its removal on SIGTERM; the
 * PROXY header for a unix client (v1 UNKNOWN, v2 LOCAL: exact bytes) and for a TCP client sent
 * to a unix upstream (TCP4); --accept-proxy headers without addresses on a unix listener; and
 * fds and sockets back to their baseline after 200 unix clients. Each test has its own
 * directory under /tmp. */
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* GNU C predefines unix as 1, which would turn the suite name into a number. */
#undef unix

#define BIG	(64 * MIB)
#define WORKERS "2" /* more than one: every worker accepts from the one shared socket */

/* The v2 header a unix client gets: LOCAL (0x20) over AF_UNSPEC (0x00), no address block. */
static const uint8_t v2_local[16] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51,
				      0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00 };

/* ---- a private directory per test ---- */

static char tdir[64];

/* The test's .init: a fresh directory for its socket files and config. */
static void tdir_make(void)
{
	snprintf(tdir, sizeof(tdir), "/tmp/uproxy-unix-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir), "mkdtemp: %s", strerror(errno));
}

/* The test's .fini: removes the directory and the files in it, passed or not. */
static void tdir_remove(void)
{
	char p[PATH_MAX];
	struct dirent *e;
	DIR *d;

	if (tdir[0] == '\0')
		return;
	d = opendir(tdir);
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", tdir, e->d_name);
		unlink(p);
	}
	if (d != NULL)
		closedir(d);
	rmdir(tdir);
	tdir[0] = '\0';
}

/* out := tdir/name. */
static void tpath(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", tdir, name);
}

/* ---- sockets ---- */

/* A connected non-blocking AF_UNIX stream socket to path ("@name": abstract), or -1 with
 * errno (ENOENT: no file, ECONNREFUSED: nobody listening). */
static int unix_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t n = strlen(path);
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	int fd, err;

	cr_assert_lt(n, sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, n);
	if (path[0] == '@') {
		sa.sun_path[0] = '\0';
		len--; /* an abstract name has no NUL: the length delimits it */
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
		err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	set_nonblock(fd, true);
	return fd;
}

/* A connection to a proxy's listen address ("unix:/path", "unix:@name" or "127.0.0.1:PORT"),
 * or -1 with errno. */
static int addr_connect(const char *listen)
{
	const char *colon = strrchr(listen, ':');

	if (strncmp(listen, "unix:", 5) == 0)
		return unix_connect(listen + 5);
	return tcp_connect(AF_INET, (uint16_t)atoi(colon + 1), 2000);
}

/* The same, asserted. */
static int must_connect(const char *listen)
{
	int fd = addr_connect(listen);

	cr_assert_geq(fd, 0, "connect to the proxy at %s: %s", listen, strerror(errno));
	return fd;
}

/* A harness backend on a unix socket path: bound, not listening (connects are refused until
 * backend_run), served by the harness's echo/sink/handler loops like a TCP one. */
static void ubackend_bind(struct backend *b, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->mu, NULL);
	b->family = AF_UNIX;
	b->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(b->lfd, 0);
	cr_assert_lt(strlen(path), sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	cr_assert_eq(bind(b->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind %s: %s", path,
		     strerror(errno));
	b->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	cr_assert_geq(b->stop_efd, 0);
}

/* The number of sockets in /proc/net/unix bound to (or accepted from a listener on) path. */
static int unix_socks_at(const char *path)
{
	FILE *f = fopen("/proc/net/unix", "re");
	char line[512];
	int n = 0;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f)) {
		char *sp = strrchr(line, ' ');
		size_t len;

		if (sp == NULL)
			continue;
		len = strcspn(sp + 1, "\n");
		n += len == strlen(path) && strncmp(sp + 1, path, len) == 0;
	}
	fclose(f);
	return n;
}

/* ---- the proxy ---- */

/* Starts uproxy with args (after the binary) and waits ≤ 3 s until ready (a listen address)
 * accepts a connection; then takes its fd baseline as proxy_start does. Keep the upstream
 * bound but not listening until this returns: the probe's session then ends at once. */
static void px_spawn(struct proxy *px, const char *ready, const char *const args[])
{
	char *argv[40], st[64];
	size_t n = 0;
	bool ok = false;

	memset(px, 0, sizeof(*px));
	argv[n++] = (char *)uproxy_bin();
	for (size_t i = 0; args[i] != NULL && n < 39; i++)
		argv[n++] = (char *)args[i];
	argv[n] = NULL;
	cr_assert_eq(proc_spawn(&px->proc, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
	for (int i = 0; i < 150 && !ok; i++) {
		int fd;

		if (proc_wait(&px->proc, 0))
			break;
		fd = addr_connect(ready);
		if (fd >= 0) {
			close(fd);
			ok = true;
		} else {
			sleep_ms(20);
		}
	}
	if (!ok) {
		if (!px->proc.reaped)
			proc_kill(&px->proc);
		cr_assert_fail("uproxy not ready at %s within 3 s (%s); stderr:\n%s", ready,
			       status_str(&px->proc, st, sizeof(st)), proc_stderr(&px->proc));
	}
	px->base_fds = count_fds(px->proc.pid);
	for (int i = 0, steady = 0; i < 100 && steady < 10; i++) {
		int k;

		sleep_ms(20);
		k = count_fds(px->proc.pid);
		steady = k == px->base_fds ? steady + 1 : 0;
		px->base_fds = k;
	}
}

/* uproxy --listen listen --upstream upstream --workers 2 [extra...]. */
static void px_start(struct proxy *px, const char *listen, const char *upstream,
		     const char *const extra[])
{
	const char *args[32] = { "--listen", listen, "--upstream", upstream, "--workers", WORKERS };
	size_t n = 6;

	for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	px_spawn(px, listen, args);
}

/* Waits ≤ timeout_ms for the proxy's fd count to be back at its baseline; asserts. */
static void assert_fds_back(const struct proxy *px, int timeout_ms, const char *what)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	int fds;
	char desc[4096];

	while ((fds = count_fds(px->proc.pid)) != px->base_fds && now_ms() < deadline)
		sleep_ms(10);
	if (fds == px->base_fds)
		return;
	describe_fds(px->proc.pid, desc, sizeof(desc));
	cr_assert_fail("%s: after %d ms the proxy has %d fds (baseline %d):%s", what, timeout_ms,
		       fds, px->base_fds, desc);
}

/* "127.0.0.1:PORT" of a backend. */
static void tcp_spec(char *out, size_t len, const struct backend *b)
{
	snprintf(out, len, "127.0.0.1:%u", b->port);
}

/* ---- 64 MiB each way at once ---- */

/* The upstream's side of a full-duplex transfer: sends its stream while checking the client's,
 * on the one connection it expects. */
struct duplex {
	uint64_t send_seed, recv_seed, len;
	struct xfer x;
	atomic_int conns;
	atomic_bool done;
};

static void duplex_handler(int fd, void *arg)
{
	struct duplex *d = arg;

	if (atomic_fetch_add(&d->conns, 1) != 0) { /* only the test's own connection */
		close(fd);
		return;
	}
	xfer_run(&d->x, fd, d->send_seed, d->len, true, d->recv_seed, 50000);
	close(fd);
	atomic_store(&d->done, true);
}

static void assert_rx(const struct xfer *x, uint64_t want_len, uint64_t seed, const char *dir)
{
	cr_assert_eq(x->rx.bad_at, -1, "%s: first corrupted byte at offset %lld (of %llu received)",
		     dir, (long long)x->rx.bad_at, (unsigned long long)x->rx.len);
	cr_assert_eq(x->rx.len, want_len,
		     "%s: received %llu bytes, want %llu (receive ended: %s, after %llu ms)", dir,
		     (unsigned long long)x->rx.len, (unsigned long long)want_len,
		     io_end_name(x->recv_end), (unsigned long long)x->ms);
	cr_assert_eq(x->rx.hash, stream_hash(seed, want_len), "%s: checksum differs", dir);
	cr_assert_eq(x->recv_end, IO_EOF, "%s: the data ended with %s, want EOF", dir,
		     io_end_name(x->recv_end));
}

/* Client at listen, upstream b (bound, not yet listening) named upstream: len bytes each way
 * at the same time, both checked byte for byte; then every fd is back and SIGTERM exits 0. */
static void duplex_through(const char *listen, const char *upstream, struct backend *b,
			   uint64_t len)
{
	struct duplex d = { .send_seed = 0xd0a4, .recv_seed = 0xc11e, .len = len };
	struct proxy px;
	struct xfer x;
	int fd;

	px_start(&px, listen, upstream, NULL);
	b->handler = duplex_handler;
	b->arg = &d;
	backend_run(b, BK_HANDLER);
	fd = must_connect(listen);
	xfer_run(&x, fd, d.recv_seed, len, true, d.send_seed, 50000);
	cr_assert_eq(x.send_end, IO_DONE, "client sent %llu of %llu bytes, then: %s",
		     (unsigned long long)x.sent, (unsigned long long)len, io_end_name(x.send_end));
	assert_rx(&x, len, d.send_seed, "upstream→client");
	for (int i = 0; i < 1000 && !atomic_load(&d.done); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&d.done), "the upstream's transfer did not end within 10 s");
	cr_assert_eq(d.x.send_end, IO_DONE, "upstream sent %llu of %llu bytes, then: %s",
		     (unsigned long long)d.x.sent, (unsigned long long)len,
		     io_end_name(d.x.send_end));
	assert_rx(&d.x, len, d.recv_seed, "client→upstream");
	cr_assert_eq(atomic_load(&d.conns), 1, "the upstream saw %d connections, want 1",
		     atomic_load(&d.conns));
	cr_log_info("%s -> %s: %llu MiB each way in %llu ms", listen, upstream,
		    (unsigned long long)(len / MIB), (unsigned long long)x.ms);
	close(fd);
	assert_fds_back(&px, 1000, "after the transfer");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	backend_stop(b);
}

Test(unix, unix_listener_tcp_upstream_64mib_both_ways, .init = tdir_make, .fini = tdir_remove,
     .timeout = 60) /* serial */
{
	char path[128], listen[160], up[64];
	struct backend b;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	duplex_through(listen, up, &b, BIG);
	cr_assert_eq(access(path, F_OK), -1, "the socket file outlived the proxy");
}

Test(unix, tcp_listener_unix_upstream_64mib_both_ways, .init = tdir_make, .fini = tdir_remove,
     .timeout = 60) /* serial */
{
	char path[128], listen[64], up[160];
	struct backend b;

	tpath(path, sizeof(path), "u.sock");
	snprintf(up, sizeof(up), "unix:%s", path);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", free_port());
	ubackend_bind(&b, path);
	duplex_through(listen, up, &b, BIG);
}

Test(unix, unix_to_unix_64mib_both_ways, .init = tdir_make, .fini = tdir_remove,
     .timeout = 60) /* serial */
{
	char lpath[128], upath[128], listen[160], up[160];
	struct backend b;

	tpath(lpath, sizeof(lpath), "l.sock");
	tpath(upath, sizeof(upath), "u.sock");
	snprintf(listen, sizeof(listen), "unix:%s", lpath);
	snprintf(up, sizeof(up), "unix:%s", upath);
	ubackend_bind(&b, upath);
	duplex_through(listen, up, &b, BIG);
	cr_assert_eq(access(lpath, F_OK), -1, "the socket file outlived the proxy");
}

Test(unix, abstract_listener_serves, .init = tdir_make, .fini = tdir_remove, .timeout = 30)
{
	char listen[64], up[64];
	struct backend b;

	snprintf(listen, sizeof(listen), "unix:@uproxy-test-%d", (int)getpid());
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	duplex_through(listen, up, &b, 1 * MIB);
	cr_assert_eq(unix_socks_at(listen + 5), 0, "the abstract socket outlived the proxy");
}

/* ---- the socket file: stale, live, not a socket, mode, removal ---- */

Test(unix, stale_socket_file_is_replaced_and_served, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	char path[128], listen[160], up[64], needle[200];
	struct backend b;
	struct proxy killed, px;
	struct stat st;
	int fd;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	/* a proxy killed without a chance to clean up leaves its socket file behind */
	px_start(&killed, listen, up, NULL);
	proc_kill(&killed.proc);
	proc_release(&killed.proc);
	cr_assert_eq(lstat(path, &st), 0, "SIGKILL removed the socket file?");
	cr_assert(S_ISSOCK(st.st_mode));
	/* Stale once the kernel has let go of the listening socket: an io_uring's in-flight
	 * accept holds it until the ring is torn down, a little after the process is gone
	 * (meanwhile it still accepts, and a new proxy rightly finds it in use). */
	for (int i = 0; i < 200 && (fd = unix_connect(path)) >= 0; i++) {
		close(fd);
		sleep_ms(10);
	}
	cr_assert_lt(unix_connect(path), 0, "the killed proxy's socket still accepts after 2 s");
	cr_assert_eq(errno, ECONNREFUSED, "the stale file should refuse: %s", strerror(errno));

	px_start(&px, listen, up, NULL);
	backend_run(&b, BK_ECHO);
	fd = must_connect(listen);
	cr_assert(echo_roundtrip(fd, 0x57a1e, 256 * KIB, 5000), "echo through the new proxy");
	close(fd);
	snprintf(needle, sizeof(needle), "removed stale socket file unix:%s", path);
	cr_assert_geq(proxy_wait_log(&px, needle, 0, 1000), 0, "no '%s' in its log:\n%s", needle,
		      proxy_stderr(&px));
	assert_fds_back(&px, 1000, "after the echo");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	cr_assert_eq(access(path, F_OK), -1, "the socket file outlived the proxy");
	backend_stop(&b);
}

Test(unix, live_socket_is_refused_and_left_alone, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	char path[128], listen[160], up[64], needle[200];
	const char *args[] = { "--listen", listen, "--upstream", up, "--workers", WORKERS, NULL };
	struct backend b;
	struct proxy owner;
	struct run_result r;
	struct stat before, after;
	int fd;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	px_start(&owner, listen, up, NULL);
	backend_run(&b, BK_ECHO);
	cr_assert_eq(lstat(path, &before), 0);

	run_uproxy(&r, 5000, args);
	cr_assert(r.exited, "the second proxy did not exit within 5 s");
	cr_assert_eq(r.code, 1, "the second proxy exited %d, want 1; stderr:\n%s", r.code, r.err);
	snprintf(needle, sizeof(needle), "unix:%s is in use by another process", path);
	cr_assert(strstr(r.err, needle), "its stderr lacks '%s':\n%s", needle, r.err);
	run_result_free(&r);

	/* the owner's file is untouched (the loser did not remove it on its way out) */
	cr_assert_eq(lstat(path, &after), 0, "the socket file is gone");
	cr_assert(before.st_ino == after.st_ino && before.st_ctim.tv_sec == after.st_ctim.tv_sec &&
			  before.st_ctim.tv_nsec == after.st_ctim.tv_nsec,
		  "the owner's socket file was replaced or changed");
	fd = must_connect(listen);
	cr_assert(echo_roundtrip(fd, 0x11fe, 64 * KIB, 5000), "the owner no longer serves");
	close(fd);
	cr_assert(proxy_stop(&owner), "the owner did not exit 0 on SIGTERM");
	cr_assert_eq(access(path, F_OK), -1, "the owner left its socket file");
	backend_stop(&b);
}

Test(unix, regular_file_is_refused_and_left_alone, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	static const char content[] = "not a socket: precious data\n";
	char path[128], listen[160], up[64], buf[128] = { 0 };
	const char *args[] = { "--listen", listen, "--upstream", up, "--workers", WORKERS, NULL };
	struct run_result r;
	struct stat before, after;
	FILE *f;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	snprintf(up, sizeof(up), "127.0.0.1:%u", free_port());
	f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(content, f);
	fclose(f);
	cr_assert_eq(chmod(path, 0640), 0);
	cr_assert_eq(lstat(path, &before), 0);

	run_uproxy(&r, 5000, args);
	cr_assert(r.exited, "the proxy did not exit within 5 s");
	cr_assert_eq(r.code, 1, "the proxy exited %d, want 1; stderr:\n%s", r.code, r.err);
	cr_assert(strstr(r.err, path) && strstr(r.err, "not a socket"),
		  "its stderr does not name %s as not a socket:\n%s", path, r.err);
	run_result_free(&r);

	cr_assert_eq(lstat(path, &after), 0, "the file is gone");
	cr_assert(S_ISREG(after.st_mode));
	cr_assert_eq(after.st_ino, before.st_ino, "the file was replaced");
	cr_assert_eq(after.st_mode, before.st_mode, "its mode changed");
	cr_assert(after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
			  after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
		  "it was written to");
	f = fopen(path, "re");
	cr_assert_not_null(f);
	cr_assert_eq(fread(buf, 1, sizeof(buf) - 1, f), strlen(content));
	fclose(f);
	cr_assert_str_eq(buf, content);
}

/* `ls -l`'s first column for st_mode of a socket: "srw-rw----". */
static void ls_mode(mode_t m, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";

	out[0] = S_ISSOCK(m) ? 's' : '?';
	for (int i = 0; i < 9; i++)
		out[1 + i] = m & (1u << (8 - i)) ? rwx[i] : '-';
	out[10] = '\0';
}

/* Starts the proxy (args; listen is its unix: address) under umask 0077, which would strip
 * group and other from the file, checks the socket file shows want, that the proxy serves, and
 * that SIGTERM removes the file. */
static void check_mode(const char *listen, struct backend *b, const char *const args[],
		       const char *want)
{
	const char *path = listen + 5;
	struct proxy px;
	struct stat st;
	char got[11];
	mode_t old = umask(0077);
	int fd;

	px_spawn(&px, listen, args);
	umask(old);
	backend_run(b, BK_ECHO);
	cr_assert_eq(lstat(path, &st), 0);
	ls_mode(st.st_mode, got);
	cr_assert_str_eq(got, want, "%s shows %s (%04o), want %s", path, got,
			 (unsigned)(st.st_mode & 07777), want);
	fd = must_connect(listen);
	cr_assert(echo_roundtrip(fd, 0x30de, 4 * KIB, 5000), "echo through %s", listen);
	close(fd);
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	cr_assert_eq(access(path, F_OK), -1, "the socket file outlived the proxy");
	backend_stop(b);
}

Test(unix, unix_mode_from_config_file, .init = tdir_make, .fini = tdir_remove, .timeout = 30)
{
	char path[128], listen[160], conf[160], up[64];
	const char *args[] = { "--config", conf, NULL };
	struct backend b;

	tpath(path, sizeof(path), "l.sock");
	tpath(conf, sizeof(conf), "uproxy.conf");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	file_write_atomic(conf,
			  "workers " WORKERS "\n"
			  "[listener web]\n"
			  "listen %s\n"
			  "upstream %s\n"
			  "unix-mode 0600\n",
			  listen, up);
	check_mode(listen, &b, args, "srw-------");
}

Test(unix, unix_mode_on_command_line, .init = tdir_make, .fini = tdir_remove, .timeout = 30)
{
	char path[128], listen[160], up[64];
	const char *args[] = { "--listen", listen,	  "--upstream", up,  "--workers",
			       WORKERS,	   "--unix-mode", "0660",	NULL };
	struct backend b;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	check_mode(listen, &b, args, "srw-rw----");
}

Test(unix, unix_mode_default_is_0666, .init = tdir_make, .fini = tdir_remove, .timeout = 30)
{
	char path[128], listen[160], up[64];
	const char *args[] = { "--listen", listen, "--upstream", up, "--workers", WORKERS, NULL };
	struct backend b;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	check_mode(listen, &b, args, "srw-rw-rw-"); /* nginx's choice too, umask or not */
}

Test(unix, socket_file_removed_on_sigterm, .init = tdir_make, .fini = tdir_remove, .timeout = 30)
{
	char path[128], listen[160], up[64];
	struct backend b;
	struct proxy px;
	struct stat st;
	int fd;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	px_start(&px, listen, up, NULL);
	backend_run(&b, BK_ECHO);
	cr_assert_eq(lstat(path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	cr_assert_eq(unix_socks_at(path), 1, "one listening socket shared by the workers");
	fd = must_connect(listen);
	cr_assert(echo_roundtrip(fd, 0x5e7, 64 * KIB, 5000));
	close(fd);
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	cr_assert_eq(lstat(path, &st), -1, "the socket file is still there after SIGTERM");
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(access(tdir, F_OK), 0, "its directory is left alone");
	cr_assert_eq(unix_socks_at(path), 0);
	backend_stop(&b);
}

/* ---- PROXY protocol ---- */

/* What the upstream got on each connection, up to its EOF. */
#define CAP_SLOTS 4
struct capture {
	atomic_int n;
	struct {
		char buf[4096];
		size_t len;
		atomic_bool done;
	} s[CAP_SLOTS];
};

static void cap_handler(int fd, void *arg)
{
	struct capture *c = arg;
	int i = atomic_fetch_add(&c->n, 1);
	uint64_t deadline = now_ms() + 5000;

	if (i >= CAP_SLOTS) {
		close(fd);
		return;
	}
	while (c->s[i].len < sizeof(c->s[i].buf) && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		k = read(fd, c->s[i].buf + c->s[i].len, sizeof(c->s[i].buf) - c->s[i].len);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
			break;
		if (k > 0)
			c->s[i].len += (size_t)k;
	}
	close(fd);
	atomic_store(&c->s[i].done, true);
}

/* Sends data on a client connection to listen (a fresh one, or *fd_in when given), half-closes,
 * and asserts that the upstream's connection number slot (0: the first since backend_run)
 * carried exactly want (wlen bytes) up to its EOF. Closes the client. */
static void expect_upstream(const char *listen, struct capture *c, int slot, const void *data,
			    size_t dlen, const void *want, size_t wlen, const int *fd_in)
{
	size_t done = 0;
	int fd = fd_in != NULL ? *fd_in : must_connect(listen);
	enum io_end e;

	cr_assert_lt(slot, CAP_SLOTS);
	e = io_write_all(fd, data, dlen, 2000, &done);
	cr_assert_eq(e, IO_DONE, "client write: %s after %zu bytes", io_end_name(e), done);
	shutdown(fd, SHUT_WR);
	for (int i = 0; i < 500 && !atomic_load(&c->s[slot].done); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&c->s[slot].done),
		  "upstream connection %d did not end within 5 s "
		  "(%d connections so far)",
		  slot, atomic_load(&c->n));
	cr_assert(c->s[slot].len == wlen && memcmp(c->s[slot].buf, want, wlen) == 0,
		  "the upstream got %zu bytes:\n  %s\nwant %zu bytes:\n  %s", c->s[slot].len,
		  bytes_show(c->s[slot].buf, c->s[slot].len), wlen, bytes_show(want, wlen));
	close(fd);
}

/* A unix client through --send-proxy version (listen unix:, upstream TCP): the upstream must
 * get hdr then the client's bytes, nothing else. */
static void send_proxy_unix_client(const char *version, const void *hdr, size_t hlen)
{
	static const char payload[] = "GET / HTTP/1.0\r\nHost: unix\r\n\r\n";
	char path[128], listen[160], up[64], want[256];
	const char *extra[] = { "--send-proxy", version, NULL };
	struct capture *c = calloc(1, sizeof(*c));
	struct backend b;
	struct proxy px;

	cr_assert_not_null(c);
	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	px_start(&px, listen, up, extra);
	b.handler = cap_handler;
	b.arg = c;
	backend_run(&b, BK_HANDLER);
	memcpy(want, hdr, hlen);
	memcpy(want + hlen, payload, sizeof(payload) - 1);
	expect_upstream(listen, c, 0, payload, sizeof(payload) - 1, want,
			hlen + sizeof(payload) - 1, NULL);
	assert_fds_back(&px, 1000, "after the session");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c);
}

Test(unix, send_proxy_v1_unix_client_is_unknown, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	send_proxy_unix_client("v1", "PROXY UNKNOWN\r\n", 15);
}

Test(unix, send_proxy_v2_unix_client_is_local_unspec, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	send_proxy_unix_client("v2", v2_local, sizeof(v2_local));
}

/* The header describes the client, not the upstream: a TCP client relayed to a unix upstream
 * gets its TCP4 addresses, ports included. */
Test(unix, send_proxy_v1_tcp_client_to_unix_upstream, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	static const char payload[] = "hello over a unix upstream\n";
	char path[128], listen[64], up[160], want[256];
	const char *extra[] = { "--send-proxy", "v1", NULL };
	struct capture *c = calloc(1, sizeof(*c));
	uint16_t port = free_port();
	struct backend b;
	struct proxy px;
	int fd, n;

	cr_assert_not_null(c);
	tpath(path, sizeof(path), "u.sock");
	snprintf(up, sizeof(up), "unix:%s", path);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	ubackend_bind(&b, path);
	px_start(&px, listen, up, extra);
	b.handler = cap_handler;
	b.arg = c;
	backend_run(&b, BK_HANDLER);
	fd = must_connect(listen);
	n = snprintf(want, sizeof(want), "PROXY TCP4 127.0.0.1 127.0.0.1 %u %u\r\n%s",
		     sock_local_port(fd), port, payload);
	expect_upstream(listen, c, 0, payload, sizeof(payload) - 1, want, (size_t)n, &fd);
	assert_fds_back(&px, 1000, "after the session");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c);
}

/* --accept-proxy on a unix listener: a sender (HAProxy, or uproxy itself) with a unix client
 * says LOCAL or UNKNOWN; both are accepted, consumed, and only the bytes behind them go on. */
Test(unix, accept_proxy_local_and_unknown_on_unix_listener, .init = tdir_make, .fini = tdir_remove,
     .timeout = 30)
{
	static const char payload[] = "after the header\n";
	char path[128], listen[160], up[64], data[128];
	const char *extra[] = { "--accept-proxy", NULL };
	struct capture *c = calloc(1, sizeof(*c));
	struct backend b;
	struct proxy px;

	cr_assert_not_null(c);
	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	px_start(&px, listen, up, extra);
	b.handler = cap_handler;
	b.arg = c;
	backend_run(&b, BK_HANDLER);
	memcpy(data, v2_local, sizeof(v2_local));
	memcpy(data + sizeof(v2_local), payload, sizeof(payload) - 1);
	expect_upstream(listen, c, 0, data, sizeof(v2_local) + sizeof(payload) - 1, payload,
			sizeof(payload) - 1, NULL);
	snprintf(data, sizeof(data), "PROXY UNKNOWN\r\n%s", payload);
	expect_upstream(listen, c, 1, data, strlen(data), payload, sizeof(payload) - 1, NULL);
	assert_fds_back(&px, 1000, "after the sessions");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c);
}

/* ---- resources ---- */

#define NCLIENTS 200

Test(unix, fds_back_to_baseline_after_200_unix_clients, .init = tdir_make, .fini = tdir_remove,
     .timeout = 60)
{
	char path[128], listen[160], up[64];
	uint8_t out[512], in[512];
	static int fds[NCLIENTS];
	struct backend b;
	struct proxy px;

	tpath(path, sizeof(path), "l.sock");
	snprintf(listen, sizeof(listen), "unix:%s", path);
	backend_bind(&b, AF_INET);
	tcp_spec(up, sizeof(up), &b);
	px_start(&px, listen, up, NULL);
	backend_run(&b, BK_ECHO);
	/* all 200 open through the proxy at once: each completes a round trip before the next
	 * connects, and none is closed before the last one's */
	for (int i = 0; i < NCLIENTS; i++) {
		size_t done = 0;
		enum io_end e;

		fds[i] = must_connect(listen);
		fill_random(out, sizeof(out), 0x200, (uint64_t)i * sizeof(out));
		e = io_write_all(fds[i], out, sizeof(out), 2000, &done);
		cr_assert_eq(e, IO_DONE, "client %d: write: %s", i, io_end_name(e));
		e = io_read_exact(fds[i], in, sizeof(in), 2000, &done);
		cr_assert_eq(e, IO_DONE, "client %d: echo: %s after %zu bytes", i, io_end_name(e),
			     done);
		cr_assert_arr_eq(in, out, sizeof(out), "client %d: echo differs", i);
	}
	cr_assert_eq(unix_socks_at(path), 1 + NCLIENTS,
		     "the listener and one accepted socket "
		     "per client");
	cr_assert_eq(tcp4_socks_to(b.port, 0), NCLIENTS, "one upstream connection per client");
	for (int i = 0; i < NCLIENTS; i++)
		close(fds[i]);
	assert_fds_back(&px, 2000, "after 200 unix clients closed");
	for (int i = 0; i < 200 && (unix_socks_at(path) != 1 || tcp4_socks_to(b.port, 0) != 0); i++)
		sleep_ms(10);
	cr_assert_eq(unix_socks_at(path), 1, "accepted unix sockets left (the listener is 1)");
	cr_assert_eq(tcp4_socks_to(b.port, 0), 0, "upstream connections left");
	cr_assert(proxy_stop(&px), "the proxy did not exit 0 on SIGTERM");
	cr_assert_eq(access(path, F_OK), -1, "the socket file outlived the proxy");
	backend_stop(&b);
}
