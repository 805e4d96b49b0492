/* Access control (--allow/--deny, allow/deny lines) against the real binary, with clients bound
 * to many source addresses of 127.0.0.0/8: a denied client is closed at once (EOF or RST within
 * REFUSE_MS, no byte and no connection reach the upstream) while allowed ones are served byte
 * for byte; first match wins; no match allows; IPv6 ::1; the PROXY header's address is the one
 * checked under --accept-proxy; uproxy_connections_denied_total{listener="default"} counts every
 * denial; the denial log line is rate limited; refused connections leave no fd behind. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A denied client is closed in the completion of its accept, well under 1 ms on loopback;
 * 100 ms leaves a 100x margin for a loaded 2-core machine. */
#define REFUSE_MS 100
/* LOG_RATELIMIT_BURST (include/uproxy/log.h): lines per limiter per 1 s window. */
#define LOG_BURST 5
#define DENIED_KEY "uproxy_connections_denied_total{listener=\"default\"}"
/* proxy_start's readiness probe is one real connection from 127.0.0.1 (::1 for an IPv6
 * listener): where the rules deny that address, it is one more denial to count. */
#define PROBE 1

/* The client on fd must be closed by the proxy within REFUSE_MS (EOF or RST) and receive
 * nothing; it first sends a few bytes, which must never reach the upstream. Closes fd. */
static void expect_refused(int fd, const char *what)
{
	uint64_t t0 = now_ms(), extra = 0;
	enum io_end e;

	(void)send(fd, "must not pass", 13, MSG_NOSIGNAL);
	e = io_wait_close(fd, REFUSE_MS, &extra);
	cr_assert(e == IO_EOF || e == IO_RESET,
		  "%s: the proxy did not close a refused client within %d ms (%s after %llu ms)",
		  what, REFUSE_MS, io_end_name(e), (unsigned long long)(now_ms() - t0));
	cr_assert_eq(extra, 0, "%s: a refused client received %llu bytes", what,
		     (unsigned long long)extra);
	close(fd);
}

/* The client on fd must be served: n bytes of stream seed echoed byte for byte, then a clean
 * EOF after its own. Closes fd. */
static void expect_served(int fd, uint64_t seed, uint64_t n, const char *what)
{
	struct xfer x;

	xfer_run(&x, fd, seed, n, true, seed, 5000);
	cr_assert_eq(x.sent, n, "%s: sent %llu of %llu (%s)", what, (unsigned long long)x.sent,
		     (unsigned long long)n, io_end_name(x.send_end));
	cr_assert_eq(x.rx.len, n, "%s: echoed %llu of %llu bytes, then %s", what,
		     (unsigned long long)x.rx.len, (unsigned long long)n, io_end_name(x.recv_end));
	cr_assert_lt(x.rx.bad_at, 0, "%s: echo corrupt at byte %lld", what,
		     (long long)x.rx.bad_at);
	cr_assert_eq(x.rx.hash, stream_hash(seed, n), "%s: checksum differs", what);
	cr_assert_eq(x.recv_end, IO_EOF, "%s: ended with %s, want EOF", what,
		     io_end_name(x.recv_end));
	close(fd);
}

/* Starts an echo backend and the proxy with --stats on a free port and more (NULL-terminated),
 * listening on [::1] when listen6, else on 127.0.0.1. Returns the stats port. */
static uint16_t start(struct backend *b, struct proxy *px, bool listen6, const char *const more[])
{
	static char sarg[32], larg[64];
	struct proxy_cfg cfg = { 0 };
	uint16_t sport = free_port();
	size_t n = 0;

	snprintf(sarg, sizeof(sarg), "127.0.0.1:%u", sport);
	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	if (listen6) {
		cfg.port = free_port();
		snprintf(larg, sizeof(larg), "[::1]:%u", cfg.port);
		cfg.listen = larg;
		cfg.probe_family = AF_INET6;
	}
	cfg.extra[n++] = "--stats";
	cfg.extra[n++] = sarg;
	for (size_t i = 0; more && more[i]; i++) {
		cr_assert_lt(n, 11, "too many arguments");
		cfg.extra[n++] = more[i];
	}
	cfg.extra[n] = NULL;
	proxy_start(px, &cfg);
	backend_run(b, BK_ECHO);
	return sport;
}

/* The upstream has accepted exactly want connections and received exactly bytes. */
static void upstream_saw(struct backend *b, int want, uint64_t bytes, const char *what)
{
	sleep_ms(20); /* a connection the proxy wrongly opened would have arrived by now */
	cr_assert_eq(atomic_load(&b->accepted), want, "%s: the upstream accepted %d connections, "
		     "want %d", what, atomic_load(&b->accepted), want);
	cr_assert_eq(atomic_load(&b->bytes_in), bytes, "%s: the upstream received %llu bytes, "
		     "want %llu", what, (unsigned long long)atomic_load(&b->bytes_in),
		     (unsigned long long)bytes);
}

static void finish(struct backend *b, struct proxy *px, const char *what)
{
	assert_proxy_idle(px, 2000, what);
	cr_assert(proxy_stop(px), "proxy did not exit 0 on SIGTERM");
	backend_stop(b);
}

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define N 65536

Test(access, deny_one_allow_all, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint16_t sport = start(&b, &px, false, ARGS("--deny", "127.0.0.2/32", "--allow", "all"));

	expect_refused(tcp_connect_from("127.0.0.2", px.port), "127.0.0.2 (denied)");
	upstream_saw(&b, 0, 0, "after the denied client");
	expect_served(tcp_connect_from("127.0.0.3", px.port), 0xacc3, N, "127.0.0.3 (allowed)");
	upstream_saw(&b, 1, N, "after the allowed client");
	expect_refused(tcp_connect_from("127.0.0.2", px.port), "127.0.0.2 again");
	expect_served(tcp_connect_from("127.0.0.1", px.port), 0xacc1, N, "127.0.0.1 (allowed)");
	upstream_saw(&b, 2, 2 * N, "after both allowed clients");
	metrics_wait(sport, DENIED_KEY, 2, 2000, NULL);
	finish(&b, &px, "after two denied and two served clients");
}

Test(access, allow_net_deny_all, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint16_t sport =
		start(&b, &px, false, ARGS("--allow", "127.0.0.0/24", "--deny", "all"));

	expect_refused(tcp_connect_from("127.0.1.1", px.port), "127.0.1.1 (outside the /24)");
	expect_refused(tcp_connect_from("127.1.0.1", px.port), "127.1.0.1 (outside the /24)");
	upstream_saw(&b, 0, 0, "after the denied clients");
	expect_served(tcp_connect_from("127.0.0.200", px.port), 0xa200, N, "127.0.0.200 (inside)");
	expect_served(tcp_connect_from("127.0.0.5", px.port), 0xa005, N, "127.0.0.5 (inside)");
	upstream_saw(&b, 2, 2 * N, "after the allowed clients");
	metrics_wait(sport, DENIED_KEY, 2, 2000, NULL);
	finish(&b, &px, "after the /24 test");
}

Test(access, ipv6_loopback, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint16_t sport;

	if (!have_ipv6())
		cr_skip_test("::1 is not available on this machine");
	/* ::1 denied: an IPv6 rule matches an IPv6 client */
	sport = start(&b, &px, true, ARGS("--deny", "::1", "--allow", "all"));
	expect_refused(tcp_connect_from("::1", px.port), "::1 with deny ::1");
	upstream_saw(&b, 0, 0, "after ::1 was denied");
	metrics_wait(sport, DENIED_KEY, 1 + PROBE, 2000, NULL);
	finish(&b, &px, "after ::1 was denied");

	/* other IPv6 and IPv4 rules leave ::1 alone; no match allows */
	sport = start(&b, &px, true,
		      ARGS("--deny", "2001:db8::/32", "--deny", "::2", "--deny", "0.0.0.0/0"));
	expect_served(tcp_connect_from("::1", px.port), 0xa6, N, "::1 matching no rule");
	upstream_saw(&b, 1, N, "after ::1 was served");
	metrics_wait(sport, DENIED_KEY, 0, 2000, NULL);
	finish(&b, &px, "after ::1 was served");
}

Test(access, first_match_wins, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint16_t sport;

	/* the earlier, narrower allow wins over the later deny; no match allows */
	sport = start(&b, &px, false,
		      ARGS("--allow", "127.0.0.4", "--deny", "127.0.0.0/24", "--allow",
			   "127.0.1.0/24", "--deny", "127.0.1.9"));
	expect_served(tcp_connect_from("127.0.0.4", px.port), 0xf4, N,
		      "127.0.0.4 (allow .4 first)");
	expect_refused(tcp_connect_from("127.0.0.5", px.port), "127.0.0.5 (deny /24)");
	expect_served(tcp_connect_from("127.0.1.9", px.port), 0xf9, N,
		      "127.0.1.9 (the allow /24 before the deny .9)");
	expect_served(tcp_connect_from("127.0.2.1", px.port), 0xf21, N, "127.0.2.1 (no match)");
	upstream_saw(&b, 3, 3 * N, "first order");
	metrics_wait(sport, DENIED_KEY, 1 + PROBE, 2000, NULL); /* 127.0.0.1 is in the denied /24 */
	finish(&b, &px, "after the first order");

	/* the same rules the other way round: the wide deny comes first and decides */
	sport = start(&b, &px, false,
		      ARGS("--deny", "127.0.0.0/24", "--allow", "127.0.0.4", "--deny", "127.0.1.9",
			   "--allow", "127.0.1.0/24"));
	expect_refused(tcp_connect_from("127.0.0.4", px.port), "127.0.0.4 (deny /24 first)");
	expect_refused(tcp_connect_from("127.0.1.9", px.port), "127.0.1.9 (deny .9 first)");
	expect_served(tcp_connect_from("127.0.1.8", px.port), 0xf18, N, "127.0.1.8 (allow /24)");
	upstream_saw(&b, 1, N, "reversed order");
	metrics_wait(sport, DENIED_KEY, 2 + PROBE, 2000, NULL);
	finish(&b, &px, "after the reversed order");
}

Test(access, denied_counted_log_ratelimited, .timeout = 60) /* serial */
{
	/* 1,000 denied connections from 127.0.0.2 on one worker: the counter says 1000, the
	 * log says so at most LOG_BURST times per 1 s window of the worker's limiter. Over a
	 * span of T ms, at most floor(T / 1000) + 1 windows start, so at most
	 * LOG_BURST x (floor(T / 1000) + 1) lines; unlimited it would be 1000. */
	struct backend b;
	struct proxy px;
	uint16_t sport;
	uint64_t t0, span;
	long from;
	char *err, *line;
	int lines = 0, bound;

	sport = start(&b, &px, false, ARGS("--workers", "1", "--deny", "127.0.0.2"));
	err = proxy_stderr(&px);
	from = (long)strlen(err);
	free(err);
	t0 = now_ms();
	for (int i = 0; i < 1000; i++)
		expect_refused(tcp_connect_from("127.0.0.2", px.port), "one of 1000 denied");
	metrics_wait(sport, DENIED_KEY, 1000, 3000, NULL);
	sleep_ms(100); /* a line written after the counter moved */
	span = now_ms() - t0;
	err = proxy_stderr(&px);
	for (line = err + from; *line != '\0';) {
		char *end = strchr(line, '\n');
		size_t len = end ? (size_t)(end - line) : strlen(line);

		if (memmem(line, len, "denied", 6) && memmem(line, len, "127.0.0.2", 9))
			lines++;
		line += len + (end != NULL);
	}
	bound = LOG_BURST * (int)(span / 1000 + 1);
	cr_log_info("1000 denied connections in %llu ms: %d log lines (bound %d)",
		    (unsigned long long)span, lines, bound);
	cr_assert_geq(lines, 1, "no log line says 127.0.0.2 was denied; stderr:\n%.2000s",
		      err + from);
	cr_assert_leq(lines, bound, "%d log lines for 1000 denials in %llu ms, want at most %d "
		      "(%d per second)", lines, (unsigned long long)span, bound, LOG_BURST);
	free(err);
	upstream_saw(&b, 0, 0, "after 1000 denied connections");
	finish(&b, &px, "after 1000 denied connections");
}

Test(access, accept_proxy_header_address_checked, .timeout = 30)
{
	/* The TCP peer is 127.0.0.1, which "deny all" would refuse: only the PROXY header's
	 * source may decide. 10.1.2.3 is denied, 10.1.2.4 allowed by 10.0.0.0/8. */
	static const char deny_hdr[] = "PROXY TCP4 10.1.2.3 127.0.0.1 40000 80\r\n";
	static const char allow_hdr[] = "PROXY TCP4 10.1.2.4 127.0.0.1 40001 80\r\n";
	struct backend b;
	struct proxy px;
	size_t done;
	uint16_t sport;
	int fd;

	sport = start(&b, &px, false,
		      ARGS("--accept-proxy", "--deny", "10.1.2.3", "--allow", "10.0.0.0/8",
			   "--deny", "all"));
	fd = tcp_connect_from("127.0.0.1", px.port);
	cr_assert_eq(io_write_all(fd, deny_hdr, strlen(deny_hdr), 2000, &done), IO_DONE);
	expect_refused(fd, "PROXY header naming 10.1.2.3");
	upstream_saw(&b, 0, 0, "after the denied PROXY source");

	fd = tcp_connect_from("127.0.0.1", px.port);
	cr_assert_eq(io_write_all(fd, allow_hdr, strlen(allow_hdr), 2000, &done), IO_DONE);
	expect_served(fd, 0xbb, N, "PROXY header naming 10.1.2.4");
	upstream_saw(&b, 1, N, "after the allowed PROXY source (header not forwarded)");
	metrics_wait(sport, DENIED_KEY, 1, 2000, NULL);
	finish(&b, &px, "after the PROXY header checks");
}
