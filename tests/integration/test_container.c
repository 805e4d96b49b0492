/* uproxy where a container runtime blocks io_uring (Docker's and containerd's default seccomp
 * profiles make io_uring_setup/enter/register fail with EPERM; a kernel without io_uring says
 * ENOSYS), emulated by seccomp_launch: with --backend auto it must fall back to epoll, say so
 * once and how to get io_uring back, and proxy as it does on io_uring; --backend io_uring must
 * exit 1 naming the cause; --backend epoll must run on epoll where io_uring works. */
#include "harness.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define BIG   (64 * MIB)
#define NCONC 200

/* The launcher's path, from SECCOMP_LAUNCH (set by tests/integration/meson.build). Without
 * it these tests fail: a silent skip would hide that nothing checks the container path. */
static const char *launcher(void)
{
	const char *p = getenv("SECCOMP_LAUNCH");

	if (p == NULL || *p == '\0')
		cr_assert_fail(
		    "SECCOMP_LAUNCH is not set: meson did not find libseccomp at configure "
		    "time, so tests/integration/seccomp_launch was not built. Run "
		    "scripts/setup.sh (it installs libseccomp-dev), then "
		    "'meson setup --reconfigure BUILD'.");
	if (access(p, X_OK) != 0)
		cr_assert_fail("no seccomp_launch at '%s': %s", p, strerror(errno));
	return p;
}

/* Each needle is a list of alternatives separated by '|'; true if line holds one of them. */
static bool line_has(const char *line, size_t len, const char *needle)
{
	char alt[128];

	while (*needle != '\0') {
		size_t n = strcspn(needle, "|");

		snprintf(alt, sizeof(alt), "%.*s", (int)n, needle);
		if (memmem(line, len, alt, strlen(alt)) != NULL)
			return true;
		needle += n + (needle[n] == '|');
	}
	return false;
}

/* The number of lines of text holding every needle (NULL-terminated); the first such line is
 * copied into first. */
static int lines_with(const char *text, const char *const needles[], char *first, size_t flen)
{
	int count = 0;

	first[0] = '\0';
	while (*text != '\0') {
		size_t len = strcspn(text, "\n");
		bool all = true;

		for (size_t i = 0; needles[i] != NULL && all; i++)
			all = line_has(text, len, needles[i]);
		if (all && count++ == 0)
			snprintf(first, flen, "%.*s", (int)len, text);
		text += len + (text[len] == '\n');
	}
	return count;
}

/* io_uring instances the process holds: fds that are anon_inode:[io_uring]. */
static int io_uring_fds(pid_t pid)
{
	char dir[64], path[320], target[128];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	cr_assert_not_null(d, "opendir %s: %s", dir, strerror(errno));
	while ((e = readdir(d)) != NULL) {
		ssize_t len;

		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		len = readlink(path, target, sizeof(target) - 1);
		if (len <= 0)
			continue;
		target[len] = '\0';
		n += strcmp(target, "anon_inode:[io_uring]") == 0;
	}
	closedir(d);
	return n;
}

/* "Seccomp:" (0 none, 2 filter) and "NoNewPrivs:" from /proc/PID/status; -1 if absent. */
static void seccomp_status(pid_t pid, int *mode, int *nnp)
{
	char path[64], line[256];
	FILE *f;

	*mode = *nnp = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL) {
		sscanf(line, "Seccomp: %d", mode);
		sscanf(line, "NoNewPrivs: %d", nnp);
	}
	fclose(f);
}

/* Like proxy_start, with uproxy run as "seccomp_launch --errno err -- uproxy ...": binds the
 * backend, waits (≤ 2 s, the harness's readiness bound) until the proxy accepts, takes the fd
 * baseline, then runs the echo backend. err NULL runs uproxy without the launcher. */
static void start_echo(struct backend *b, struct proxy *px, const char *err,
		       const char *const extra[])
{
	char listen[64], upstream[64], st[64];

	backend_bind(b, AF_INET);
	memset(px, 0, sizeof(*px));
	px->up_port = b->port;
	px->family = AF_INET;
	snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", b->port);
	for (int attempt = 0; attempt < 3; attempt++) {
		char *argv[32];
		size_t n = 0;
		bool ready = false;
		char *out;

		px->port = free_port();
		snprintf(listen, sizeof(listen), "127.0.0.1:%u", px->port);
		if (err != NULL) {
			argv[n++] = (char *)launcher();
			argv[n++] = "--errno";
			argv[n++] = (char *)err;
			argv[n++] = "--";
		}
		argv[n++] = (char *)uproxy_bin();
		argv[n++] = "--listen";
		argv[n++] = listen;
		argv[n++] = "--upstream";
		argv[n++] = upstream;
		for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
			argv[n++] = (char *)extra[i];
		argv[n] = NULL;
		cr_assert_eq(proc_spawn(&px->proc, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
		for (int i = 0; i < 100 && !ready; i++) {
			int fd;

			if (proc_wait(&px->proc, 0))
				break;
			fd = tcp_connect(AF_INET, px->port, 20);
			if (fd >= 0) {
				close(fd);
				ready = true;
			} else {
				sleep_ms(20);
			}
		}
		if (ready)
			break;
		proc_kill(&px->proc);
		out = proc_stderr(&px->proc);
		/* exit 1 may be a port taken between free_port() and bind: try another */
		if (!(WIFEXITED(px->proc.status) && WEXITSTATUS(px->proc.status) == 1 &&
		      strstr(out, "in use") != NULL && attempt < 2))
			cr_assert_fail(
			    "uproxy --listen %s%s%s not ready within 2 s (%s); stderr:\n%s", listen,
			    err != NULL ? " under seccomp_launch --errno " : "",
			    err != NULL ? err : "", status_str(&px->proc, st, sizeof(st)), out);
		free(out);
		proc_release(&px->proc);
	}
	/* the readiness probe's session ends, then the fd count must hold for 200 ms */
	for (int i = 0; i < 100 && proxy_sock_count(px->port, px->up_port) > 0; i++)
		sleep_ms(10);
	px->base_fds = count_fds(px->proc.pid);
	for (int i = 0, steady = 0; i < 100 && steady < 10; i++) {
		int n;

		sleep_ms(20);
		n = count_fds(px->proc.pid);
		steady = n == px->base_fds ? steady + 1 : 0;
		px->base_fds = n;
	}
	backend_run(b, BK_ECHO);
}

/* 64 MiB through the echo backend, both directions at once, checked byte for byte. Bound:
 * 45 s as in test_integrity; on loopback epoll moves it in 0.2-0.3 s (measured here with other
 * work running), so the bound is > 100x that: room for a machine shared with other runs. */
static void echo_big(const struct proxy *px, uint64_t seed)
{
	struct xfer x;
	int fd = tcp_connect(AF_INET, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	xfer_run(&x, fd, seed, BIG, true, seed, 45000);
	cr_assert_eq(x.send_end, IO_DONE, "client sent %llu of %llu bytes, then: %s",
		     (unsigned long long)x.sent, (unsigned long long)BIG, io_end_name(x.send_end));
	cr_assert_eq(x.rx.bad_at, -1, "echo: first corrupted byte at offset %lld",
		     (long long)x.rx.bad_at);
	cr_assert_eq(x.rx.len, BIG, "echo: received %llu of %llu bytes (ended: %s after %llu ms)",
		     (unsigned long long)x.rx.len, (unsigned long long)BIG, io_end_name(x.recv_end),
		     (unsigned long long)x.ms);
	cr_assert_eq(x.rx.hash, stream_hash(seed, BIG), "echo: checksum differs");
	cr_assert_eq(x.recv_end, IO_EOF, "after the echo the client saw %s, want EOF",
		     io_end_name(x.recv_end));
	cr_log_info("64 MiB echoed both ways in %llu ms", (unsigned long long)x.ms);
	close(fd);
}

/* n sessions open at once (each completes a 1 KiB round trip before any sends its bulk), each
 * echoing 64 KiB. Bound: 30 s; 200 such sessions took 0.12-0.19 s on epoll here (> 100x). */
static void echo_concurrent(const struct proxy *px, const struct backend *b, int n, uint64_t seed)
{
	struct multi_stats st;

	multi_echo(&st, n, AF_INET, px->port, 64 * KIB, 1 * KIB, seed, 30000);
	cr_log_info("%d x 64 KiB echoed in %llu ms", n, (unsigned long long)st.ms);
	cr_assert_eq(st.ok, n,
		     "%d of %d sessions intact (connect failed %d, corrupt %d, early EOF "
		     "%d, reset %d, timeout %d); %s",
		     st.ok, n, st.connect_failed, st.corrupt, st.short_eof, st.reset, st.timeout,
		     st.first_problem);
	cr_assert_eq(st.warm_ok, n,
		     "only %d of %d sessions made their first round trip while all "
		     "were open",
		     st.warm_ok, n);
	cr_assert_geq(atomic_load(&b->peak_open), n,
		      "the upstream saw at most %d connections open "
		      "at once, want %d",
		      atomic_load(&b->peak_open), n);
}

/* uproxy with default options under the filter: on epoll, saying why once, proxying intact. */
static void falls_back(const char *err, const char *reason, const char *remedy)
{
	const char *const line_needles[] = {"epoll", reason, remedy, NULL};
	const char *const reason_only[] = {reason, NULL};
	char line[1024], first[1024];
	struct backend b;
	struct proxy px;
	int mode, nnp, lines, reasons;
	char *log;

	raise_nofile();
	start_echo(&b, &px, err, NULL);
	/* the launcher did its part: uproxy itself runs filtered, with no_new_privs */
	seccomp_status(px.proc.pid, &mode, &nnp);
	cr_assert(mode == 2 && nnp == 1,
		  "uproxy runs with Seccomp: %d, NoNewPrivs: %d; want 2 and "
		  "1 (the filter is not in place)",
		  mode, nnp);
	cr_assert_eq(io_uring_fds(px.proc.pid), 0,
		     "uproxy holds an io_uring fd under a filter that "
		     "blocks io_uring_setup");

	log = proxy_stderr(&px);
	lines = lines_with(log, line_needles, line, sizeof(line));
	reasons = lines_with(log, reason_only, first, sizeof(first));
	cr_assert_eq(lines, 1,
		     "want exactly one line on stderr naming epoll, the reason (%s) and "
		     "how to enable io_uring (%s); found %d. stderr:\n%s",
		     reason, remedy, lines, log);
	cr_assert_eq(reasons, 1,
		     "the reason (%s) is logged %d times, want once (not per worker). "
		     "stderr:\n%s",
		     reason, reasons, log);
	cr_log_info("start-up line: %s", line);
	free(log);

	echo_big(&px, 0xc0e0);
	echo_concurrent(&px, &b, NCONC, 0xc0000);
	assert_proxy_idle(&px, 3000, "after the echoes on the epoll fallback");
	cr_assert(proxy_stop(&px), "uproxy on the epoll fallback did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* Docker's and containerd's default profiles: EPERM. Each step's bound is with its helper. */
Test(container, io_uring_blocked_falls_back_to_epoll, .timeout = 120) /* serial */
{
	falls_back("EPERM", "EPERM|not permitted", "seccomp");
}

/* A kernel without io_uring (or a profile that answers ENOSYS). */
Test(container, io_uring_missing_falls_back_to_epoll, .timeout = 120) /* serial */
{
	falls_back("ENOSYS", "ENOSYS|not implemented", "kernel");
}

/* --backend io_uring is a promise not to fall back: exit 1 at once, naming the cause once. */
Test(container, io_uring_forced_but_blocked_exits_1, .timeout = 10)
{
	static const struct {
		const char *err;
		const char *cause[4]; /* needles of the one line naming the cause */
	} cases[] = {
	    {"EPERM", {"EPERM|not permitted", "seccomp", "Docker", NULL}},
	    {"ENOSYS", {"ENOSYS", "kernel", NULL}},
	};

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		static const char *const epoll_needles[] = {"epoll", NULL};
		char listen[64], upstream[64], st[64], line[1024], first[1024];
		struct proc p;
		uint64_t t0, ms;
		char *err;
		int n;
		char *argv[] = {(char *)launcher(),
				"--errno",
				(char *)cases[c].err,
				"--",
				(char *)uproxy_bin(),
				"--listen",
				listen,
				"--upstream",
				upstream,
				"--backend",
				"io_uring",
				NULL};

		snprintf(listen, sizeof(listen), "127.0.0.1:%u", free_port());
		snprintf(upstream, sizeof(upstream), "127.0.0.1:%u", free_port());
		t0 = now_ms();
		cr_assert_eq(proc_spawn(&p, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
		/* 2 s: set-up fails before the first listener is bound, in milliseconds; 2 s is
		 * the harness's start-up bound, ample on a shared machine */
		if (!proc_wait(&p, 2000)) {
			err = proc_stderr(&p);
			proc_kill(&p);
			cr_assert_fail(
			    "--backend io_uring under seccomp_launch --errno %s still runs "
			    "after 2 s; stderr:\n%s",
			    cases[c].err, err);
		}
		ms = now_ms() - t0;
		err = proc_stderr(&p);
		cr_assert(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 1,
			  "--backend io_uring, io_uring blocked (%s): uproxy %s in %llu ms, want "
			  "exit 1; stderr:\n%s",
			  cases[c].err, status_str(&p, st, sizeof(st)), (unsigned long long)ms,
			  err);
		n = lines_with(err, cases[c].cause, line, sizeof(line));
		cr_assert_eq(n, 1,
			     "--errno %s: want exactly one stderr line naming the cause (%s, "
			     "%s); found %d. stderr:\n%s",
			     cases[c].err, cases[c].cause[0], cases[c].cause[1], n, err);
		cr_assert_eq(lines_with(err, epoll_needles, first, sizeof(first)), 0,
			     "--backend io_uring must not fall back to epoll, yet: %s", first);
		cr_log_info("--errno %s: exit 1 in %llu ms: %s", cases[c].err,
			    (unsigned long long)ms, line);
		free(err);
		proc_release(&p);
	}
}

/* --backend epoll where io_uring works: epoll all the same, and no fallback warning. */
Test(container, backend_epoll_forced_without_filter, .timeout = 60) /* serial */
{
	static const char *const extra[] = {"--backend", "epoll", NULL};
	static const char *const epoll_needles[] = {"epoll", NULL};
	static const char *const fallback[] = {"EPERM|ENOSYS|not permitted|running on epoll", NULL};
	struct io_uring_params params;
	char line[1024];
	struct backend b;
	struct proxy px;
	int ring, mode, nnp;
	char *log;

	/* the premise: io_uring works here, so epoll can only be the option's doing */
	memset(&params, 0, sizeof(params));
	ring = (int)syscall(__NR_io_uring_setup, 4, &params);
	cr_assert_geq(ring, 0, "io_uring_setup fails on this host (%s): this test needs io_uring",
		      strerror(errno));
	close(ring);

	raise_nofile();
	start_echo(&b, &px, NULL, extra);
	seccomp_status(px.proc.pid, &mode, &nnp);
	cr_assert_eq(mode, 0,
		     "uproxy runs under a seccomp filter (Seccomp: %d) without the "
		     "launcher",
		     mode);
	cr_assert_eq(io_uring_fds(px.proc.pid), 0,
		     "--backend epoll, yet uproxy holds an io_uring "
		     "fd");
	log = proxy_stderr(&px);
	cr_assert_geq(lines_with(log, epoll_needles, line, sizeof(line)), 1,
		      "no start-up line names epoll; stderr:\n%s", log);
	cr_log_info("start-up line: %s", line);
	cr_assert_eq(lines_with(log, fallback, line, sizeof(line)), 0,
		     "--backend epoll is a choice, not a fallback, yet: %s", line);
	free(log);

	echo_big(&px, 0xe0e0);
	echo_concurrent(&px, &b, 50, 0xe0000);
	assert_proxy_idle(&px, 3000, "after the echoes on --backend epoll");
	cr_assert(proxy_stop(&px), "uproxy --backend epoll did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* The launcher itself: a program it cannot execute is exit 127 with the reason, as a shell. */
Test(container, launcher_exec_failure_is_127, .timeout = 5)
{
	char *argv[] = {(char *)launcher(), "--", "/nonexistent/uproxy", NULL};
	char st[64];
	struct proc p;
	char *err;

	cr_assert_eq(proc_spawn(&p, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
	if (!proc_wait(&p, 2000)) {
		proc_kill(&p);
		cr_assert_fail("seccomp_launch of a missing program still runs after 2 s");
	}
	err = proc_stderr(&p);
	cr_assert(WIFEXITED(p.status) && WEXITSTATUS(p.status) == 127,
		  "seccomp_launch -- /nonexistent/uproxy %s, want exit 127; stderr:\n%s",
		  status_str(&p, st, sizeof(st)), err);
	cr_assert(strstr(err, "/nonexistent/uproxy") != NULL && strstr(err, "No such file") != NULL,
		  "the error does not name the program and the reason: %s", err);
	free(err);
	proc_release(&p);
}
