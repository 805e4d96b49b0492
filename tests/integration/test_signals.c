/* Shutdown on SIGTERM and SIGINT: exit 0 within 1 s when idle and, with
 * --drain-timeout 0 or on a second signal during a drain, with open sessions
 * or a transfer stalled on a full upstream (sends in flight); every client
 * still connected must then see EOF or a reset. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define NCLIENTS 10

/* Signals the proxy and asserts it exits 0 within 1 s. */
static void signal_and_check(struct proxy *px, int sig)
{
	char st[64];
	uint64_t t0 = now_ms(), ms;
	bool exited;

	cr_assert_eq(kill(px->proc.pid, sig), 0);
	exited = proc_wait(&px->proc, 3000);
	ms = now_ms() - t0;
	if (!exited) {
		char *err = proxy_stderr(px);

		proc_kill(&px->proc);
		cr_assert_fail("still running 3 s after %s; stderr:\n%s", strsignal(sig), err);
	}
	status_str(&px->proc, st, sizeof(st));
	cr_assert(WIFEXITED(px->proc.status) && WEXITSTATUS(px->proc.status) == 0,
		  "after %s the proxy %s, want exit 0", strsignal(sig), st);
	cr_assert_leq(ms, 1000, "the proxy took %llu ms to exit after %s, want ≤ 1000 ms",
		      (unsigned long long)ms, strsignal(sig));
}

static void idle(int sig)
{
	struct backend b;
	struct proxy px;

	setup_echo(&b, &px, NULL);
	signal_and_check(&px, sig);
	proc_release(&px.proc);
	backend_stop(&b);
}

static void with_clients(int sig)
{
	static const char *const no_drain[] = { "--drain-timeout", "0", NULL };
	struct backend b;
	struct proxy px;
	int fds[NCLIENTS];

	setup_echo(&b, &px, no_drain);
	for (int i = 0; i < NCLIENTS; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "client %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x5150 + (uint64_t)i, 1024, 3000),
			  "client %d: echo through the proxy failed", i);
	}
	signal_and_check(&px, sig);
	for (int i = 0; i < NCLIENTS; i++) {
		uint64_t extra = 0;
		enum io_end e = io_wait_close(fds[i], 1000, &extra);

		cr_assert(e == IO_EOF || e == IO_RESET,
			  "client %d: %s after the proxy exited, want EOF or reset", i,
			  io_end_name(e));
		cr_assert_eq(extra, 0, "client %d: %llu unexpected bytes", i,
			     (unsigned long long)extra);
		close(fds[i]);
	}
	proc_release(&px.proc);
	backend_stop(&b);
}

Test(signals, sigterm_idle, .timeout = 20)
{
	idle(SIGTERM);
}

Test(signals, sigint_idle, .timeout = 20)
{
	idle(SIGINT);
}

Test(signals, sigterm_with_clients, .timeout = 20)
{
	with_clients(SIGTERM);
}

Test(signals, sigint_with_clients, .timeout = 20)
{
	with_clients(SIGINT);
}

/* An upstream that never reads, until told to stop (≤ 15 s). */
static atomic_bool stalled_stop;

static void upstream_stalls(int fd, void *arg)
{
	(void)arg;
	for (int i = 0; i < 1500 && !atomic_load(&stalled_stop); i++)
		sleep_ms(10);
	close(fd);
}

Test(signals, sigterm_with_stalled_transfer, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	uint64_t sent = 0, last_progress, extra;
	static uint8_t buf[65536];
	enum io_end e;
	int fd;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.extra[0] = "--drain-timeout";
	cfg.extra[1] = "0";
	proxy_start(&px, &cfg);
	b.handler = upstream_stalls;
	backend_run(&b, BK_HANDLER);

	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	/* fill every buffer on the way until the client cannot send any more */
	last_progress = now_ms();
	for (uint64_t t0 = now_ms(); now_ms() - t0 < 5000 && now_ms() - last_progress < 300;) {
		ssize_t k = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);

		if (k > 0) {
			sent += (uint64_t)k;
			last_progress = now_ms();
		} else if (k < 0 && errno != EAGAIN) {
			cr_assert_fail("client send failed after %llu bytes: %s",
				       (unsigned long long)sent, strerror(errno));
		} else {
			sleep_ms(5);
		}
	}
	cr_log_info("client stalled after %llu bytes", (unsigned long long)sent);
	signal_and_check(&px, SIGTERM);
	e = io_wait_close(fd, 1000, &extra);
	cr_assert(e == IO_EOF || e == IO_RESET, "client saw %s after the proxy exited, want EOF or "
		  "reset", io_end_name(e));
	close(fd);
	atomic_store(&stalled_stop, true);
	proc_release(&px.proc);
	backend_stop(&b);
}

Test(signals, second_signal_closes_at_once, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	int fds[NCLIENTS];

	setup_echo(&b, &px, NULL); /* default --drain-timeout: 10 s */
	for (int i = 0; i < NCLIENTS; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "client %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x2d + (uint64_t)i, 1024, 3000),
			  "client %d: echo through the proxy failed", i);
	}
	cr_assert_eq(kill(px.proc.pid, SIGTERM), 0);
	sleep_ms(300);
	cr_assert(!proc_wait(&px.proc, 0), "with %d sessions open and a 10 s drain the proxy was "
		  "gone 300 ms after SIGTERM", NCLIENTS);
	/* the second signal ends the drain: exit 0 within 1 s */
	signal_and_check(&px, SIGINT);
	for (int i = 0; i < NCLIENTS; i++) {
		enum io_end e = io_wait_close(fds[i], 1000, NULL);

		cr_assert(e == IO_EOF || e == IO_RESET, "client %d: %s after the proxy exited, want "
			  "EOF or reset", i, io_end_name(e));
		close(fds[i]);
	}
	proc_release(&px.proc);
	backend_stop(&b);
}
