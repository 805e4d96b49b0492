/* The process life cycle through the real binary: --config files (serving,
 * command-line overrides, errors naming file and line), draining on SIGTERM
 * (a download in flight completes, new clients are refused at once, the
 * drain timeout cuts idle sessions, the proxy exits as soon as the last one
 * ends, a second signal closes everything at once) and SIGHUP (the upstream
 * list applies at once without dropping a session; a broken file changes
 * nothing; a changed listener option applies to new sessions, a global one
 * only warns). The zero-downtime restart is restart.sh: it needs a network
 * namespace. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- local helpers ------------------------------------------------------ */

/* Spawns uproxy args... (they name the listen port, on the command line or
 * in a config file) and waits ≤ 3 s until port listens, without connecting.
 * Returns false if it exited 1 (the port was taken meanwhile: try another);
 * asserts on any other failure. */
static bool try_start(struct proxy *px, uint16_t port, uint16_t up_port, const char *const args[])
{
	const uint16_t ports[] = { port };

	if (!proxy_spawn_ports(px, args, ports, 1))
		return false;
	px->up_port = up_port;
	return true;
}

static bool serve_once(uint16_t port, uint64_t seed, char *why, size_t wlen)
{
	int fd = tcp_connect(AF_INET, port, 2000);
	bool ok;

	if (fd < 0) {
		snprintf(why, wlen, "connect: %s", strerror(errno));
		return false;
	}
	ok = echo_roundtrip(fd, seed, 256, 3000);
	if (!ok)
		snprintf(why, wlen, "256-byte echo through the proxy failed");
	close(fd);
	return ok;
}

static int connect_or_fail(uint16_t port)
{
	int fd = tcp_connect(AF_INET, port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy on port %u: %s", port, strerror(errno));
	return fd;
}

/* Waits ≤ timeout_ms for needle in the proxy's stderr. */
static bool wait_log(struct proxy *px, const char *needle, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		char *err = proxy_stderr(px);
		bool found = strstr(err, needle) != NULL;

		free(err);
		if (found || now_ms() >= deadline)
			return found;
		sleep_ms(20);
	}
}

/* SIGTERM and exit 0 within timeout_ms; returns the ms it took. */
static uint64_t term_and_wait(struct proxy *px, int timeout_ms)
{
	uint64_t t0 = now_ms();
	char st[64];

	cr_assert_eq(kill(px->proc.pid, SIGTERM), 0);
	if (!proc_wait(&px->proc, timeout_ms)) {
		char *err = proxy_stderr(px);

		proc_kill(&px->proc);
		cr_assert_fail("still running %d ms after SIGTERM; stderr:\n%s", timeout_ms, err);
	}
	cr_assert(WIFEXITED(px->proc.status) && WEXITSTATUS(px->proc.status) == 0,
		  "after SIGTERM the proxy %s, want exit 0", status_str(&px->proc, st, sizeof(st)));
	return now_ms() - t0;
}

/* ---- config file ---------------------------------------------------------- */

Test(lifecycle, config_file, .timeout = 30, .fini = conf_dir_remove)
{
	struct backend file_up, dead, live;
	struct proxy px;
	char dir[64], path[128], lu[48];
	uint64_t t0, ms, extra = 0;
	enum io_end e;
	int fd;
	bool started = false;

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	backend_bind(&file_up, AF_INET);
	backend_bind(&dead, AF_INET); /* bound, never listening: refused */
	backend_bind(&live, AF_INET);
	backend_run(&file_up, BK_ECHO);
	backend_run(&live, BK_ECHO);

	/* 1: the file alone */
	for (int attempt = 0; attempt < 3 && !started; attempt++) {
		uint16_t port = free_port();
		const char *args[] = { "--config", path, NULL };

		file_write_atomic(path,
				  "# uproxy integration test\n"
				  "listen 127.0.0.1:%u   # trailing comment\n"
				  "\n"
				  "   upstream=127.0.0.1:%u\n"
				  "balance roundrobin\n"
				  "idle-timeout\t60000\n",
				  port, file_up.port);
		started = try_start(&px, port, file_up.port, args);
	}
	cr_assert(started, "uproxy --config never got a free port");
	for (int i = 0; i < 10; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0xc0f1 + (uint64_t)i, why, sizeof(why)),
			  "--config FILE: session %d: %s", i, why);
	}
	cr_assert_eq(atomic_load(&file_up.accepted), 10, "the file's upstream accepted %d "
		     "connections for 10 sessions", atomic_load(&file_up.accepted));
	term_and_wait(&px, 3000);
	proc_release(&px.proc);

	/* 2: the command line on top: -u replaces the whole list (the file's has a
	 * refusing upstream, and 'retries 0'), --idle-timeout overrides the file's */
	started = false;
	for (int attempt = 0; attempt < 3 && !started; attempt++) {
		uint16_t port = free_port();
		const char *args[] = { "-c", path, "-u", lu, "--idle-timeout", "500", NULL };

		file_write_atomic(path,
				  "# uproxy integration test\n"
				  "listen 127.0.0.1:%u\n"
				  "upstream 127.0.0.1:%u\n"
				  "upstream 127.0.0.1:%u\n"
				  "idle-timeout 60000\n"
				  "retries 0\n",
				  port, file_up.port, dead.port);
		snprintf(lu, sizeof(lu), "127.0.0.1:%u", live.port);
		started = try_start(&px, port, live.port, args);
	}
	cr_assert(started, "uproxy --config never got a free port");
	int file_before = atomic_load(&file_up.accepted);

	for (int i = 0; i < 10; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0xc0f2 + (uint64_t)i, why, sizeof(why)),
			  "--config FILE -u LIVE: session %d: %s", i, why);
	}
	cr_assert_eq(atomic_load(&live.accepted), 10, "the command line's upstream accepted %d of "
		     "10", atomic_load(&live.accepted));
	cr_assert_eq(atomic_load(&file_up.accepted), file_before, "a command-line --upstream must "
		     "replace the file's list, but the file's upstream got %d sessions",
		     atomic_load(&file_up.accepted) - file_before);
	/* the file's idle-timeout 60000 is overridden by --idle-timeout 500 */
	fd = connect_or_fail(px.port);
	t0 = now_ms();
	e = io_wait_close(fd, 3000, &extra);
	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "--idle-timeout 500 over the file's 60000: a "
		  "silent client saw %s after %llu ms", io_end_name(e), (unsigned long long)ms);
	cr_assert(ms >= 400 && ms <= 1500, "--idle-timeout 500 over the file's 60000: a silent "
		  "client was closed after %llu ms, want 400-1500 ms", (unsigned long long)ms);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the sessions");
	term_and_wait(&px, 3000);
	/* the refusing upstream of the file was never tried */
	char *err = proxy_stderr(&px);

	cr_assert_not_null(strstr(err, "connect_errors=0 "), "the file's refusing upstream was "
			   "tried although -u replaced the list; stderr:\n%s", err);
	free(err);
	proc_release(&px.proc);
	backend_stop(&file_up);
	backend_stop(&dead);
	backend_stop(&live);
}

static void expect_usage_error(const char *path, const char *want, const char *what)
{
	const char *args[] = { "--config", path, NULL };
	struct run_result r;

	run_uproxy(&r, 5000, args);
	cr_assert(r.exited, "%s: uproxy still running after 5 s", what);
	cr_assert_eq(r.code, 2, "%s: exit %d, want 2; stderr:\n%s", what, r.code, r.err);
	cr_assert_not_null(strstr(r.err, want), "%s: stderr does not name '%s':\n%s", what, want,
			   r.err);
	run_result_free(&r);
}

Test(lifecycle, config_file_errors, .timeout = 30, .fini = conf_dir_remove)
{
	char dir[64], path[128], want[192];
	uint16_t port = free_port();

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);

	/* an unknown option on line 3 */
	file_write_atomic(path,
			  "# comment\nlisten 127.0.0.1:%u\nfrobnicate 7\nupstream 127.0.0.1:1\n",
			  port);
	snprintf(want, sizeof(want), "%s:3", path);
	expect_usage_error(path, want, "unknown option on line 3");
	{
		struct run_result r;
		const char *args[] = { "--config", path, NULL };

		run_uproxy(&r, 5000, args);
		cr_assert_not_null(strstr(r.err, "frobnicate"), "the error does not name the "
				   "unknown option:\n%s", r.err);
		run_result_free(&r);
	}

	/* a bad value on line 2 */
	file_write_atomic(path, "listen 127.0.0.1:%u\nidle-timeout abc\nupstream 127.0.0.1:1\n",
			  port);
	snprintf(want, sizeof(want), "%s:2", path);
	expect_usage_error(path, want, "bad idle-timeout on line 2");

	/* a value out of range on line 4 */
	file_write_atomic(path, "listen 127.0.0.1:%u\nupstream 127.0.0.1:1\n\nretries 99\n", port);
	snprintf(want, sizeof(want), "%s:4", path);
	expect_usage_error(path, want, "retries 99 on line 4");

	/* a bad address on line 5, after comments and blank lines */
	file_write_atomic(path, "# a\n\n# b\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:0\n", port);
	snprintf(want, sizeof(want), "%s:5", path);
	expect_usage_error(path, want, "upstream port 0 on line 5");

	/* a file that does not exist */
	snprintf(path, sizeof(path), "%s/missing.conf", dir);
	expect_usage_error(path, path, "missing config file");
}

/* ---- drain on SIGTERM ------------------------------------------------------ */

#define DL_LEN (64 * MIB)
#define DL_RATE (20 * MIB) /* bytes per second the client reads */

struct reader {
	int fd;
	struct stream_check c;
	enum io_end end;
	atomic_ullong got;
	atomic_bool done;
	uint64_t end_at;
};

/* Reads the download at DL_RATE until EOF, an error or 25 s. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;
	uint64_t start = now_ms(), deadline = start + 25000;
	static uint8_t buf[65536];

	r->end = IO_TIMEOUT;
	while (now_ms() < deadline) {
		uint64_t allowed = (now_ms() - start) * DL_RATE / 1000 + sizeof(buf);
		struct pollfd pfd = { .fd = r->fd, .events = POLLIN };
		size_t want = sizeof(buf);
		ssize_t k;

		if (r->c.len >= allowed) {
			sleep_ms(2);
			continue;
		}
		if (allowed - r->c.len < want)
			want = (size_t)(allowed - r->c.len);
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		k = recv(r->fd, buf, want, MSG_DONTWAIT);
		if (k > 0) {
			check_feed(&r->c, buf, (size_t)k);
			atomic_store(&r->got, r->c.len);
		} else if (k == 0) {
			r->end = IO_EOF;
			break;
		} else if (errno != EAGAIN && errno != EINTR) {
			r->end = errno == ECONNRESET ? IO_RESET : IO_ERROR;
			break;
		}
	}
	r->end_at = now_ms();
	atomic_store(&r->done, true);
	return NULL;
}

Test(lifecycle, drain_completes_download, .timeout = 30) /* serial */
{
	static struct reader r;
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	pthread_t thr;
	uint64_t t_sig, t_refused = 0, got_at_sig;
	int accepted_after = 0, other_err = 0;
	char st[64];

	backend_bind(&b, AF_INET);
	b.source_seed = 0xd4a1;
	b.source_len = DL_LEN;
	cfg.up_port = b.port;
	proxy_start(&px, &cfg); /* default --drain-timeout (10 s) */
	backend_run(&b, BK_SOURCE);

	r.fd = connect_or_fail(px.port);
	check_init(&r.c, b.source_seed);
	cr_assert_eq(pthread_create(&thr, NULL, reader_main, &r), 0);
	for (int i = 0; i < 500 && atomic_load(&r.got) < 8 * MIB && !atomic_load(&r.done); i++)
		sleep_ms(10);
	got_at_sig = atomic_load(&r.got);
	cr_assert(got_at_sig >= 8 * MIB && !atomic_load(&r.done), "the download did not get "
		  "going: %llu bytes in 5 s", (unsigned long long)got_at_sig);

	/* SIGTERM with the download in flight */
	t_sig = now_ms();
	cr_assert_eq(kill(px.proc.pid, SIGTERM), 0);
	/* new clients are refused at once */
	while (now_ms() - t_sig < 1000) {
		int fd = tcp_connect(AF_INET, px.port, 100);

		if (fd >= 0) {
			accepted_after++;
			close_rst(fd);
		} else if (errno == ECONNREFUSED) {
			t_refused = now_ms();
			break;
		} else if (errno != ETIMEDOUT) {
			other_err = errno;
		}
		sleep_ms(2);
	}
	cr_assert_neq(t_refused, 0, "1 s after SIGTERM a new connection is still not refused "
		      "(%d accepted after the signal; last other error: %s)", accepted_after,
		      other_err ? strerror(other_err) : "none");
	cr_assert_leq(t_refused - t_sig, 200, "a new connection was refused only %llu ms after "
		      "SIGTERM, want ≤ 200 ms", (unsigned long long)(t_refused - t_sig));
	for (int i = 0; i < 5; i++) {
		int fd = tcp_connect(AF_INET, px.port, 500);

		cr_assert(fd < 0 && errno == ECONNREFUSED, "draining: connection %d after the first "
			  "refusal was %s", i, fd >= 0 ? "accepted" : strerror(errno));
	}
	/* the proxy drains: still running while the download is in flight */
	sleep_ms(300);
	cr_assert(!atomic_load(&r.done), "the download ended %llu ms after SIGTERM (%s after "
		  "%llu of %llu bytes)", (unsigned long long)(r.end_at - t_sig),
		  io_end_name(r.end), (unsigned long long)r.c.len, (unsigned long long)DL_LEN);
	cr_assert(!proc_wait(&px.proc, 0), "the proxy %s 300 ms after SIGTERM with a download in "
		  "flight (%llu of %llu bytes read), want it to drain",
		  status_str(&px.proc, st, sizeof(st)), (unsigned long long)atomic_load(&r.got),
		  (unsigned long long)DL_LEN);

	pthread_join(thr, NULL);
	cr_log_info("SIGTERM at %llu MiB; refused after %llu ms; download done %llu ms after it",
		    (unsigned long long)(got_at_sig / MIB), (unsigned long long)(t_refused - t_sig),
		    (unsigned long long)(r.end_at - t_sig));
	cr_assert_eq(r.c.bad_at, -1, "download corrupted at offset %lld", (long long)r.c.bad_at);
	cr_assert_eq(r.c.len, DL_LEN, "the download ended (%s) after %llu of %llu bytes",
		     io_end_name(r.end), (unsigned long long)r.c.len, (unsigned long long)DL_LEN);
	cr_assert_eq(r.end, IO_EOF, "after the whole download the client saw %s, want EOF",
		     io_end_name(r.end));
	cr_assert_eq(r.c.hash, stream_hash(b.source_seed, DL_LEN), "download checksum differs");
	close(r.fd);
	/* and then exits 0 */
	cr_assert(proc_wait(&px.proc, 2000), "the proxy still runs 2 s after its last session "
		  "ended (SIGTERM %llu ms ago)", (unsigned long long)(now_ms() - t_sig));
	cr_assert(WIFEXITED(px.proc.status) && WEXITSTATUS(px.proc.status) == 0,
		  "after draining the proxy %s, want exit 0", status_str(&px.proc, st, sizeof(st)));
	proc_release(&px.proc);
	backend_stop(&b);
}

Test(lifecycle, drain_timeout_closes_idle, .timeout = 30)
{
	static const char *const extra[] = { "--drain-timeout", "500", NULL };
	struct backend b;
	struct proxy px;
	uint64_t ms, extra_bytes = 0;
	enum io_end e;
	int fd;

	setup_echo(&b, &px, extra);
	fd = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(fd, 0xd7, 1024, 3000), "echo through the proxy failed");
	ms = term_and_wait(&px, 3000);
	cr_assert(ms >= 450 && ms <= 1500, "--drain-timeout 500 with an idle session: the proxy "
		  "exited %llu ms after SIGTERM, want 500-1500 ms", (unsigned long long)ms);
	e = io_wait_close(fd, 1000, &extra_bytes);
	cr_assert(e == IO_EOF || e == IO_RESET, "after the drain timeout the client saw %s, want "
		  "EOF or reset", io_end_name(e));
	cr_assert_eq(extra_bytes, 0);
	close(fd);
	proc_release(&px.proc);
	backend_stop(&b);
}

Test(lifecycle, drain_exits_when_last_session_ends, .timeout = 30)
{
	static const char *const extra[] = { "--drain-timeout", "8000", NULL };
	struct backend b;
	struct proxy px;
	uint64_t t_close;
	char st[64];
	int fd;

	setup_echo(&b, &px, extra);
	fd = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(fd, 0xd8, 1024, 3000), "echo through the proxy failed");
	cr_assert_eq(kill(px.proc.pid, SIGTERM), 0);
	sleep_ms(300);
	cr_assert(!proc_wait(&px.proc, 0), "the proxy %s 300 ms after SIGTERM with a session "
		  "open (--drain-timeout 8000)", status_str(&px.proc, st, sizeof(st)));
	/* the session still works while draining, then ends */
	cr_assert(echo_roundtrip(fd, 0xd9, 1024, 3000), "echo during the drain failed");
	t_close = now_ms();
	close(fd);
	cr_assert(proc_wait(&px.proc, 1500), "the last session ended but the proxy still runs "
		  "1.5 s later (--drain-timeout 8000)");
	cr_assert(WIFEXITED(px.proc.status) && WEXITSTATUS(px.proc.status) == 0,
		  "after draining the proxy %s, want exit 0", status_str(&px.proc, st, sizeof(st)));
	cr_log_info("exited %llu ms after the last session closed",
		    (unsigned long long)(now_ms() - t_close));
	proc_release(&px.proc);
	backend_stop(&b);
}

/* ---- SIGHUP ------------------------------------------------------------------ */

/* 0 if a served it, 1 if b; asserts it was served by exactly one of them. */
static int serve_which(struct proxy *px, struct backend *a, struct backend *b, uint64_t seed,
		       const char *what)
{
	int a0 = atomic_load(&a->accepted), b0 = atomic_load(&b->accepted), da, db;
	char why[128];

	cr_assert(serve_once(px->port, seed, why, sizeof(why)), "%s: %s", what, why);
	da = atomic_load(&a->accepted) - a0;
	db = atomic_load(&b->accepted) - b0;
	cr_assert_eq(da + db, 1, "%s: A accepted %d and B %d connections for one session", what,
		     da, db);
	return db;
}

static void start_on_config(struct proxy *px, const char *path, uint16_t up_a, uint16_t *port)
{
	const char *args[] = { "--config", path, NULL };
	bool started = false;

	for (int attempt = 0; attempt < 3 && !started; attempt++) {
		*port = free_port();
		file_write_atomic(path, "# pool: A\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:%u\n",
				  *port, up_a);
		started = try_start(px, *port, up_a, args);
	}
	cr_assert(started, "uproxy --config never got a free port");
}

Test(lifecycle, sighup_pool_change, .timeout = 30, .fini = conf_dir_remove)
{
	struct backend a, b;
	struct proxy px;
	char dir[64], path[128], what[64];
	uint64_t t_hup, t_b = 0;
	uint16_t port;
	int held, after = 0;

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	backend_bind(&a, AF_INET);
	backend_bind(&b, AF_INET);
	backend_run(&a, BK_ECHO);
	backend_run(&b, BK_ECHO);
	start_on_config(&px, path, a.port, &port);

	for (int i = 0; i < 20; i++) {
		snprintf(what, sizeof(what), "session %d before SIGHUP", i);
		cr_assert_eq(serve_which(&px, &a, &b, 0xe100 + (uint64_t)i, what), 0,
			     "%s went to B, which is not in the pool", what);
	}
	/* a session on A stays open across the reload */
	held = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(held, 0xe200, 4096, 3000), "echo on the held session failed");
	cr_assert_eq(atomic_load(&a.accepted), 21);

	file_write_atomic(path, "# pool: B\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:%u\n", port,
			  b.port);
	t_hup = now_ms();
	cr_assert_eq(kill(px.proc.pid, SIGHUP), 0);
	for (int i = 0; now_ms() - t_hup < 1000; i++) {
		snprintf(what, sizeof(what), "session %d after SIGHUP", i);
		if (serve_which(&px, &a, &b, 0xe300 + (uint64_t)i, what) == 1) {
			t_b = now_ms();
			break;
		}
		sleep_ms(10);
	}
	cr_assert_neq(t_b, 0, "1 s after SIGHUP (the file now lists only B) new sessions still "
		      "go to A; stderr:\n%s", proxy_stderr(&px));
	for (int i = 0; i < 20; i++) {
		snprintf(what, sizeof(what), "session %d after the reload", i);
		after += serve_which(&px, &a, &b, 0xe400 + (uint64_t)i, what);
	}
	cr_assert_eq(after, 20, "after the first session went to B, only %d of the next 20 did",
		     after);
	cr_assert(wait_log(&px, "upstream pool changed", 500), "no 'upstream pool changed' in "
		  "the log");
	cr_log_info("SIGHUP: first session on B after %llu ms", (unsigned long long)(t_b - t_hup));

	/* the session opened on A before the reload still works */
	cr_assert(echo_roundtrip(held, 0xe500, 64 * 1024, 3000), "the session held on A across the "
		  "SIGHUP no longer echoes");
	cr_assert_eq(shutdown(held, SHUT_WR), 0);
	uint64_t extra = 0;
	enum io_end e = io_wait_close(held, 2000, &extra);

	cr_assert_eq(e, IO_EOF, "the held session ended with %s, want EOF", io_end_name(e));
	close(held);
	assert_proxy_idle(&px, 2000, "after the sessions");
	term_and_wait(&px, 3000);
	proc_release(&px.proc);
	backend_stop(&a);
	backend_stop(&b);
}

Test(lifecycle, sighup_bad_config_keeps_pool, .timeout = 30, .fini = conf_dir_remove)
{
	struct backend a, b;
	struct proxy px;
	char dir[64], path[128], what[64];
	uint16_t port;

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	backend_bind(&a, AF_INET);
	backend_bind(&b, AF_INET);
	backend_run(&a, BK_ECHO);
	backend_run(&b, BK_ECHO);
	start_on_config(&px, path, a.port, &port);
	cr_assert_eq(serve_which(&px, &a, &b, 0xe600, "first session"), 0);

	/* a broken file: the reload is refused, the running pool stays */
	file_write_atomic(path, "listen 127.0.0.1:%u\nupstream 127.0.0.1:%u\nbogus-option 1\n",
			  port, b.port);
	cr_assert_eq(kill(px.proc.pid, SIGHUP), 0);
	cr_assert(wait_log(&px, "config not reloaded", 1000), "SIGHUP with a broken file: no "
		  "'config not reloaded' in the log within 1 s");
	for (int i = 0; i < 10; i++) {
		snprintf(what, sizeof(what), "session %d after the refused reload", i);
		cr_assert_eq(serve_which(&px, &a, &b, 0xe700 + (uint64_t)i, what), 0,
			     "%s went to B: a broken file was half applied", what);
	}
	cr_assert(!proc_wait(&px.proc, 0), "the proxy exited after a SIGHUP with a broken file");
	term_and_wait(&px, 3000);
	proc_release(&px.proc);
	backend_stop(&a);
	backend_stop(&b);
}

/* The design figure for the idle timeout given by the SIGHUP below, and the bounds of a
 * silent session's close: 100 ms early for the timer's tick, 1 s late for a loaded machine
 * (as timeouts/idle_timeout). */
#define HUP_IDLE_MS 500
#define HUP_IDLE_MIN_MS (HUP_IDLE_MS - 100)
#define HUP_IDLE_MAX_MS (HUP_IDLE_MS + 1000)
/* Sessions held at once while the reloaded file says max-conns 2. */
#define HUP_HELD 4

/* A listener option (idle-timeout) changed by SIGHUP applies to new sessions at once while
 * open ones keep theirs; a global one (max-conns, then buffers) only warns that it needs a
 * restart and is not applied. */
Test(lifecycle, sighup_other_option_warns, .timeout = 30, .fini = conf_dir_remove)
{
	struct backend a, b;
	struct proxy px;
	char dir[64], path[128], *err;
	uint64_t extra = 0, t0, t_old, ms;
	uint16_t port;
	enum io_end e;
	long off;
	int fd, old, held[HUP_HELD];

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	backend_bind(&a, AF_INET);
	backend_bind(&b, AF_INET);
	backend_run(&a, BK_ECHO);
	backend_run(&b, BK_ECHO);
	start_on_config(&px, path, a.port, &port);

	/* a session opened before the reload: it keeps the running idle-timeout (600000 ms by
	 * default) */
	old = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(old, 0xe7ff, 64, 3000), "echo before the SIGHUP failed");
	t_old = now_ms();

	/* idle-timeout (a listener option) and max-conns (a global one) change */
	file_write_atomic(path,
			  "listen 127.0.0.1:%u\nupstream 127.0.0.1:%u\nidle-timeout %d\n"
			  "max-conns 2\n",
			  port, a.port, HUP_IDLE_MS);
	err = proxy_stderr(&px);
	off = (long)strlen(err);
	free(err);
	cr_assert_eq(kill(px.proc.pid, SIGHUP), 0);
	cr_assert_geq(proxy_wait_log(&px, "they need a restart", off, 1000), 0,
		      "SIGHUP changed max-conns: no warning that it needs a restart within 1 s:\n%s",
		      proxy_stderr(&px));
	cr_assert_geq(proxy_wait_log(&px, "SIGHUP: config re-read", off, 1000), 0,
		      "no 'SIGHUP: config re-read' within 1 s:\n%s", proxy_stderr(&px));
	sleep_ms(100); /* the worker takes the new plan on its next loop turn */

	/* a new session gets the new idle-timeout */
	fd = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(fd, 0xe800, 64, 3000), "echo after the SIGHUP failed");
	t0 = now_ms();
	e = io_wait_close(fd, HUP_IDLE_MAX_MS + 500, &extra);
	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "idle-timeout %d from a SIGHUP: a silent new "
		  "session saw %s within %d ms, want the proxy to close it", HUP_IDLE_MS,
		  io_end_name(e), HUP_IDLE_MAX_MS + 500);
	cr_assert(ms >= HUP_IDLE_MIN_MS && ms <= HUP_IDLE_MAX_MS, "idle-timeout %d from a SIGHUP: "
		  "a silent new session was closed after %llu ms, want %d..%d", HUP_IDLE_MS,
		  (unsigned long long)ms, HUP_IDLE_MIN_MS, HUP_IDLE_MAX_MS);
	close(fd);

	/* the session opened before keeps its own: still open after 4 times the new timeout */
	ms = now_ms() - t_old;
	if (ms < 4 * HUP_IDLE_MS) {
		e = io_wait_close(old, (int)(4 * HUP_IDLE_MS - ms), &extra);
		cr_assert_eq(e, IO_TIMEOUT, "a session opened before the SIGHUP saw %s after "
			     "%llu ms of silence: the new idle-timeout %d was applied to it",
			     io_end_name(e),
			     (unsigned long long)(now_ms() - t_old), HUP_IDLE_MS);
	}
	cr_assert(echo_roundtrip(old, 0xe801, 64, 3000), "echo on the session opened before the "
		  "SIGHUP failed after %llu ms of silence", (unsigned long long)(now_ms() - t_old));

	/* max-conns 2 was not applied: the old session and HUP_HELD new ones are served at once */
	for (int i = 0; i < HUP_HELD; i++) {
		held[i] = connect_or_fail(px.port);
		cr_assert(echo_roundtrip(held[i], 0xe810 + (uint64_t)i, 64, 3000), "session %d of "
			  "%d held at once (the file says max-conns 2, which needs a restart): no "
			  "echo", i + 2, HUP_HELD + 1);
	}
	for (int i = 0; i < HUP_HELD; i++) {
		cr_assert(echo_roundtrip(held[i], 0xe820 + (uint64_t)i, 64, 3000), "second echo on "
			  "held session %d failed", i + 2);
		close(held[i]);
	}
	close(old);
	cr_assert_eq(serve_which(&px, &a, &b, 0xe802, "session after the SIGHUP"), 0);

	/* a second SIGHUP that changes buffers alone warns again */
	file_write_atomic(path,
			  "listen 127.0.0.1:%u\nupstream 127.0.0.1:%u\nidle-timeout %d\n"
			  "max-conns 2\nbuffers 64\n",
			  port, a.port, HUP_IDLE_MS);
	err = proxy_stderr(&px);
	off = (long)strlen(err);
	free(err);
	cr_assert_eq(kill(px.proc.pid, SIGHUP), 0);
	cr_assert_geq(proxy_wait_log(&px, "they need a restart", off, 1000), 0,
		      "SIGHUP changed buffers: no warning that it needs a restart within 1 s:\n%s",
		      proxy_stderr(&px));
	cr_assert_eq(serve_which(&px, &a, &b, 0xe803, "session after the second SIGHUP"), 0);
	term_and_wait(&px, 3000);
	proc_release(&px.proc);
	backend_stop(&a);
	backend_stop(&b);
}

Test(lifecycle, second_signal_closes_at_once, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint64_t t0, ms, extra = 0;
	enum io_end e;
	char st[64];
	int fd;

	setup_echo(&b, &px, NULL); /* default --drain-timeout: 10 s */
	fd = connect_or_fail(px.port);
	cr_assert(echo_roundtrip(fd, 0xe900, 1024, 3000), "echo through the proxy failed");
	cr_assert_eq(kill(px.proc.pid, SIGTERM), 0);
	sleep_ms(300);
	cr_assert(!proc_wait(&px.proc, 0), "the proxy %s 300 ms after SIGTERM with a session "
		  "open (default --drain-timeout 10000)", status_str(&px.proc, st, sizeof(st)));
	t0 = now_ms();
	cr_assert_eq(kill(px.proc.pid, SIGINT), 0);
	cr_assert(proc_wait(&px.proc, 1500), "a second signal while draining: the proxy still "
		  "runs 1.5 s later");
	ms = now_ms() - t0;
	cr_assert(WIFEXITED(px.proc.status) && WEXITSTATUS(px.proc.status) == 0,
		  "after the second signal the proxy %s, want exit 0",
		  status_str(&px.proc, st, sizeof(st)));
	cr_assert_leq(ms, 1000, "the proxy exited %llu ms after the second signal, want ≤ 1000 ms",
		      (unsigned long long)ms);
	e = io_wait_close(fd, 1000, &extra);
	cr_assert(e == IO_EOF || e == IO_RESET, "after the second signal the client saw %s, want "
		  "EOF or reset", io_end_name(e));
	close(fd);
	proc_release(&px.proc);
	backend_stop(&b);
}
