/* Operations features through the real binary: the /metrics endpoint (counter deltas for
 * known traffic, gauges, errors, 404/405, a hostile scraper that must not hold traffic up,
 * sums over workers), the access log (text, JSON, stdout, every close reason we can cause)
 * and the command-line errors of --stats, --access-log and --log-format. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
/* README: "At most 8 scrapes at once" */
#define HTTPSTATS_MAX_CONNS_DOC 8

/* ---- metrics helpers ------------------------------------------------------ */

/* The per-session series carry the listener; the command line's one is named "default" (and
 * so is its implicit pool). Exact keys, as /metrics renders them: a missing sample fails. */
#define LST "listener=\"default\""
#define ACCEPTED "uproxy_connections_accepted_total{" LST "}"
#define ACTIVE "uproxy_connections_active{" LST "}"
#define CLOSED(r) "uproxy_connections_closed_total{" LST ",reason=\"" r "\"}"
#define BYTES_C2U "uproxy_bytes_total{" LST ",direction=\"client_to_upstream\"}"
#define BYTES_U2C "uproxy_bytes_total{" LST ",direction=\"upstream_to_client\"}"
#define ATTEMPTS "uproxy_upstream_connect_attempts_total"
#define FAILURES "uproxy_upstream_connect_failures_total"
#define CONNECT_COUNT "uproxy_upstream_connect_duration_seconds_count"
#define CONNECT_INF "uproxy_upstream_connect_duration_seconds_bucket{le=\"+Inf\"}"

/* The uproxy_workers sample, labelled with the backend under test (and n workers, with n >= 0,
 * followed by its value and newline, as a substring of the scrape). */
static const char *workers_key(int n)
{
	static char k[96];
	int len = snprintf(k, sizeof(k), "uproxy_workers{backend=\"%s\"}", test_backend());

	if (n >= 0)
		snprintf(k + len, sizeof(k) - (size_t)len, " %d\n", n);
	return k;
}

/* The key of metric for upstream 127.0.0.1:port of the default listener's (implicit) pool. */
static void up_key(char *buf, size_t len, const char *metric, uint16_t port)
{
	snprintf(buf, len, "%s{pool=\"default\",upstream=\"127.0.0.1:%u\"}", metric, port);
}

/* A proxy in front of backend b (mode), with --stats on a free port and more arguments. */
static uint16_t start_with_stats(struct backend *b, struct proxy *px, enum backend_mode mode,
				 const char *const more[], char *stats_arg, size_t len)
{
	const char *extra[11];
	uint16_t sport = free_port();
	size_t n = 0;

	snprintf(stats_arg, len, "127.0.0.1:%u", sport);
	extra[n++] = "--stats";
	extra[n++] = stats_arg;
	for (size_t i = 0; more && more[i] && n < 10; i++)
		extra[n++] = more[i];
	extra[n] = NULL;
	setup(b, px, mode, extra);
	return sport;
}

/* One echo session of n bytes through the proxy with a clean close on both sides. Returns
 * the client's local port. */
static uint16_t echo_session(const struct proxy *px, uint64_t n, uint64_t seed)
{
	int fd = tcp_connect(AF_INET, px->port, 2000);
	struct xfer x;
	uint16_t lp;

	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	lp = sock_local_port(fd);
	xfer_run(&x, fd, seed, n, true, seed, 5000);
	cr_assert_eq(x.sent, n, "sent %llu of %llu (%s)", (unsigned long long)x.sent,
		     (unsigned long long)n, io_end_name(x.send_end));
	cr_assert_eq(x.recv_end, IO_EOF, "echo session ended with %s after %llu bytes",
		     io_end_name(x.recv_end), (unsigned long long)x.rx.len);
	cr_assert_eq(x.rx.len, n, "echoed %llu of %llu bytes", (unsigned long long)x.rx.len,
		     (unsigned long long)n);
	cr_assert_lt(x.rx.bad_at, 0, "echo corrupt at byte %lld", (long long)x.rx.bad_at);
	close(fd);
	return lp;
}

/* Scrapes until active is 0 and the closed total (all reasons) grew by want since base,
 * or timeout_ms; the last scrape is in m. */
static void scrape_settled(uint16_t sport, const struct mset *base, double want_closed,
			   int timeout_ms, struct mset *m)
{
	static const char *const reasons[] = { "normal", "client_reset", "upstream_reset",
					       "connect_failed", "shutdown", "resource",
					       "timeout", "protocol", "limit" };
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		double closed = 0;

		metrics_scrape(sport, m);
		for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
			char key[96];

			snprintf(key, sizeof(key), CLOSED("%s"), reasons[i]);
			closed += metrics_delta(base, m, key);
		}
		if ((metrics_val(m, ACTIVE) == 0 && closed >= want_closed) || now_ms() >= deadline)
			return;
		sleep_ms(20);
	}
}

/* ---- metrics -------------------------------------------------------------- */

Test(ops, metrics_deltas, .timeout = 30)
{
	static struct mset m0, m1;
	struct backend b;
	struct proxy px;
	char sarg[32], key[128];
	uint16_t sport = start_with_stats(&b, &px, BK_ECHO, NULL, sarg, sizeof(sarg));

	metrics_scrape(sport, &m0);
	cr_assert_eq(metrics_val(&m0, workers_key(-1)), 1);
	cr_assert_eq(metrics_val(&m0, ACTIVE), 0);
	for (int i = 0; i < 7; i++)
		echo_session(&px, 1000, 0x0b5 + (uint64_t)i);
	sleep_ms(100);
	scrape_settled(sport, &m0, 7, 1000, &m1);

	cr_assert_eq(metrics_delta(&m0, &m1, ACCEPTED), 7, "accepted +%g, want +7",
		     metrics_delta(&m0, &m1, ACCEPTED));
	cr_assert_eq(metrics_delta(&m0, &m1, CLOSED("normal")), 7, "closed normal +%g, want +7",
		     metrics_delta(&m0, &m1, CLOSED("normal")));
	static const char *const others[] = { CLOSED("client_reset"), CLOSED("upstream_reset"),
					      CLOSED("connect_failed"), CLOSED("shutdown"),
					      CLOSED("resource"), CLOSED("timeout"),
					      CLOSED("protocol"), CLOSED("limit"), FAILURES };

	for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
		cr_assert_eq(metrics_delta(&m0, &m1, others[i]), 0, "%s +%g, want +0", others[i],
			     metrics_delta(&m0, &m1, others[i]));
	cr_assert_eq(metrics_delta(&m0, &m1, BYTES_C2U), 7000, "client_to_upstream +%g, want +7000",
		     metrics_delta(&m0, &m1, BYTES_C2U));
	cr_assert_eq(metrics_delta(&m0, &m1, BYTES_U2C), 7000, "upstream_to_client +%g, want +7000",
		     metrics_delta(&m0, &m1, BYTES_U2C));
	cr_assert_eq(metrics_delta(&m0, &m1, ATTEMPTS), 7, "connect attempts +%g, want +7",
		     metrics_delta(&m0, &m1, ATTEMPTS));
	cr_assert_eq(metrics_delta(&m0, &m1, CONNECT_COUNT), 7,
		     "connect duration count +%g, want +7", metrics_delta(&m0, &m1, CONNECT_COUNT));
	cr_assert_eq(metrics_val(&m1, CONNECT_INF), metrics_val(&m1, CONNECT_COUNT));
	cr_assert_eq(metrics_val(&m1, ACTIVE), 0,
		     "connections_active %g after every session closed", metrics_val(&m1, ACTIVE));
	up_key(key, sizeof(key), "uproxy_upstream_up", b.port);
	cr_assert_eq(metrics_val(&m1, key), 1, "%s = %g", key, metrics_val(&m1, key));
	up_key(key, sizeof(key), "uproxy_upstream_active_sessions", b.port);
	cr_assert_eq(metrics_val(&m1, key), 0, "%s = %g", key, metrics_val(&m1, key));
	/* one upstream configured: one per-upstream sample */
	int ups = 0;

	for (int i = 0; i < m1.n; i++)
		ups += strncmp(m1.s[i].key, "uproxy_upstream_up{", 19) == 0;
	cr_assert_eq(ups, 1, "%d uproxy_upstream_up samples for one upstream", ups);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(ops, metrics_connect_failures, .timeout = 30)
{
	static struct mset m0, m1;
	struct backend dead;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	char sarg[32], key[128];
	uint16_t sport = free_port();

	/* bound, never listening: every connect to it is refused */
	backend_bind(&dead, AF_INET);
	snprintf(sarg, sizeof(sarg), "127.0.0.1:%u", sport);
	cfg.up_port = dead.port;
	cfg.extra[0] = "--retries";
	cfg.extra[1] = "0";
	cfg.extra[2] = "--stats";
	cfg.extra[3] = sarg;
	proxy_start(&px, &cfg);
	metrics_scrape(sport, &m0);
	for (int i = 0; i < 3; i++) {
		int fd = tcp_connect(AF_INET, px.port, 2000);
		enum io_end e;
		uint64_t extra = 0;

		cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
		e = io_wait_close(fd, 3000, &extra);
		cr_assert(e == IO_EOF || e == IO_RESET, "client %d: %s, want the proxy to close", i,
			  io_end_name(e));
		cr_assert_eq(extra, 0);
		close(fd);
	}
	scrape_settled(sport, &m0, 3, 1000, &m1);
	cr_assert_eq(metrics_delta(&m0, &m1, ACCEPTED), 3, "accepted +%g",
		     metrics_delta(&m0, &m1, ACCEPTED));
	cr_assert_eq(metrics_delta(&m0, &m1, CLOSED("connect_failed")), 3,
		     "closed connect_failed +%g, want +3",
		     metrics_delta(&m0, &m1, CLOSED("connect_failed")));
	cr_assert_eq(metrics_delta(&m0, &m1, CLOSED("normal")), 0);
	cr_assert_eq(metrics_delta(&m0, &m1, FAILURES), 3, "connect failures +%g, want +3",
		     metrics_delta(&m0, &m1, FAILURES));
	cr_assert_eq(metrics_delta(&m0, &m1, ATTEMPTS), 3,
		     "connect attempts +%g, want +3 (--retries 0)",
		     metrics_delta(&m0, &m1, ATTEMPTS));
	cr_assert_eq(metrics_delta(&m0, &m1, CONNECT_COUNT), 0,
		     "a failed connect in the histogram");
	cr_assert_eq(metrics_val(&m1, ACTIVE), 0);
	/* at least 3 consecutive failures (--fail-threshold 3): marked down */
	up_key(key, sizeof(key), "uproxy_upstream_up", dead.port);
	cr_assert_eq(metrics_val(&m1, key), 0, "%s = %g after 3+ failed connects", key,
		     metrics_val(&m1, key));
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&dead);
}

Test(ops, metrics_active_gauge, .timeout = 30)
{
	static struct mset m;
	struct backend b;
	struct proxy px;
	char sarg[32], key[128];
	uint16_t sport = start_with_stats(&b, &px, BK_ECHO, NULL, sarg, sizeof(sarg));
	int fds[5];
	uint64_t t0;

	up_key(key, sizeof(key), "uproxy_upstream_active_sessions", b.port);
	for (int i = 0; i < 5; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "connect %d: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0xac + (uint64_t)i, 100, 3000), "echo %d", i);
	}
	t0 = now_ms();
	for (;;) {
		metrics_scrape(sport, &m);
		if (metrics_val(&m, ACTIVE) == 5 && metrics_val(&m, key) == 5)
			break;
		cr_assert_lt(now_ms() - t0, 200,
			     "with 5 sessions open: connections_active %g, %s %g, want 5 and 5 "
			     "within 200 ms", metrics_val(&m, ACTIVE), key, metrics_val(&m, key));
		sleep_ms(10);
	}
	for (int i = 0; i < 5; i++)
		close(fds[i]);
	t0 = now_ms();
	for (;;) {
		metrics_scrape(sport, &m);
		if (metrics_val(&m, ACTIVE) == 0 && metrics_val(&m, key) == 0)
			break;
		cr_assert_lt(now_ms() - t0, 1000,
			     "after closing the 5 sessions: connections_active %g, %s %g, want 0 "
			     "and 0 within 1 s", metrics_val(&m, ACTIVE), key,
			     metrics_val(&m, key));
		sleep_ms(10);
	}
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

static void expect_status(uint16_t sport, const char *req, int want, const char *body_has)
{
	struct http_resp r;
	char why[160];

	cr_assert(http_req(sport, req, 3000, &r, why, sizeof(why)), "'%s': %s", req, why);
	cr_assert_eq(r.status, want, "'%s' answered %d, want %d: '%.200s'", req, r.status, want,
		     r.raw);
	cr_assert_not_null(strstr(r.raw, "\r\nContent-Type: text/plain; version=0.0.4"),
			   "'%s': no 0.0.4 content type in '%.300s'", req, r.raw);
	cr_assert_not_null(strstr(r.raw, "\r\nConnection: close\r\n"));
	if (body_has)
		cr_assert_not_null(strstr(r.body, body_has), "'%s': body '%s' lacks '%s'", req,
				   r.body, body_has);
	http_free(&r);
}

Test(ops, metrics_404_405, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	char sarg[32];
	uint16_t sport = start_with_stats(&b, &px, BK_ECHO, NULL, sarg, sizeof(sarg));

	expect_status(sport, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404, NULL);
	expect_status(sport, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404, NULL);
	expect_status(sport, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		      405, NULL);
	expect_status(sport, "garbage\r\n\r\n", 400, NULL);
	expect_status(sport, METRICS_REQ, 200, "\n" ACCEPTED " ");
	expect_status(sport, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200,
		      "# TYPE uproxy_bytes_total counter\n");
	expect_status(sport, "GET /metrics HTTP/1.0\n\n", 200, workers_key(1));
	/* the endpoint serves metrics only: the proxy's own port is untouched by it */
	int fd = tcp_connect(AF_INET, px.port, 2000);

	cr_assert_geq(fd, 0);
	cr_assert(echo_roundtrip(fd, 0x404, 1000, 3000));
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* Polls the idle scrapers still open for up to ms, noting when each is closed (EOF or
 * reset); returns how many are still open. */
static int watch_idle(const int idle[20], uint64_t closed_at[20], int ms)
{
	struct pollfd p[20];
	int np = 0, map[20], open_left = 0;

	for (int i = 0; i < 20; i++) {
		if (closed_at[i])
			continue;
		p[np].fd = idle[i];
		p[np].events = POLLIN;
		p[np].revents = 0;
		map[np++] = i;
	}
	if (np == 0)
		return 0;
	poll(p, (nfds_t)np, ms);
	for (int j = 0; j < np; j++) {
		char c;
		ssize_t k;

		if (!p[j].revents) {
			open_left++;
			continue;
		}
		k = recv(idle[map[j]], &c, 1, MSG_DONTWAIT);
		cr_assert(k <= 0, "idle scraper %d got data without asking", map[j]);
		if (k == 0 || (errno != EAGAIN && errno != EINTR))
			closed_at[map[j]] = now_ms();
		else
			open_left++;
	}
	return open_left;
}

Test(ops, metrics_hostile_scrapers, .timeout = 30) /* serial */
{
	static struct mset m;
	struct backend b;
	struct proxy px;
	char sarg[32], why[160] = "";
	uint16_t sport = start_with_stats(&b, &px, BK_ECHO, NULL, sarg, sizeof(sarg));
	int idle[20];
	uint64_t closed_at[20], t0, t, ms;
	int fd, quick = 0, open_left = 20;
	struct http_resp r;
	bool answered = false;
	int tries = 0;

	/* 20 scrapers that connect and send nothing */
	for (int i = 0; i < 20; i++) {
		idle[i] = tcp_connect(AF_INET, sport, 2000);
		cr_assert_geq(idle[i], 0, "idle scraper %d: connect: %s", i, strerror(errno));
		closed_at[i] = 0;
	}
	t0 = now_ms();

	/* traffic still flows at once */
	t = now_ms();
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	cr_assert(echo_roundtrip(fd, 0x405, 1000, 2000), "echo while scrapers hang failed");
	ms = now_ms() - t;
	close(fd);
	cr_assert_leq(ms, 200, "an echo round trip took %llu ms with 20 idle scrapers, want ≤ 200",
		      (unsigned long long)ms);
	watch_idle(idle, closed_at, 0);

	/* a real scrape is answered within 3 s (refused while 8 idle ones hold the slots) */
	while (!answered && now_ms() - t0 < 3000) {
		tries++;
		answered = http_req(sport, METRICS_REQ, (int)(3000 - (now_ms() - t0)), &r, why,
				    sizeof(why));
		if (!answered)
			watch_idle(idle, closed_at, 50);
	}
	ms = now_ms() - t0;
	cr_assert(answered, "no scrape answered within 3 s of 20 idle scrapers (%d tries, last: %s)",
		  tries, why);
	cr_assert_eq(r.status, 200);
	metrics_parse(r.body, &m);
	http_free(&r);
	cr_log_info("scrape answered %llu ms after 20 idle scrapers, try %d",
		    (unsigned long long)ms, tries);

	/* and every idle one was closed: beyond 8 at once, the rest after their 2 s */
	while ((open_left = watch_idle(idle, closed_at, 50)) > 0 && now_ms() - t0 < 4000)
		;
	cr_assert_eq(open_left, 0, "%d of 20 idle scrapers still open after 4 s", open_left);
	for (int i = 0; i < 20; i++) {
		uint64_t after = closed_at[i] - t0;

		close(idle[i]);
		if (after < 1000) {
			quick++;
			continue;
		}
		cr_assert_geq(after, 1500, "idle scraper %d closed after %llu ms", i,
			      (unsigned long long)after);
		cr_assert_leq(after, 3000, "idle scraper %d closed after %llu ms, want ≈ 2 s", i,
			      (unsigned long long)after);
	}
	cr_assert_eq(quick, 20 - HTTPSTATS_MAX_CONNS_DOC,
		     "%d idle scrapers refused at once, want %d (%d served at once)", quick,
		     20 - HTTPSTATS_MAX_CONNS_DOC, HTTPSTATS_MAX_CONNS_DOC);
	/* still working afterwards */
	metrics_scrape(sport, &m);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(ops, metrics_workers_summed, .timeout = 30)
{
	static struct mset m0, m1;
	struct backend b;
	struct proxy px;
	char sarg[32];
	uint16_t sport =
		start_with_stats(&b, &px, BK_ECHO, ARGS("--workers", "2"), sarg, sizeof(sarg));

	metrics_scrape(sport, &m0);
	cr_assert_eq(metrics_val(&m0, workers_key(-1)), 2);
	for (int i = 0; i < 20; i++)
		echo_session(&px, 1000, 0x2f0 + (uint64_t)i);
	sleep_ms(100);
	scrape_settled(sport, &m0, 20, 1000, &m1);
	cr_assert_eq(metrics_delta(&m0, &m1, ACCEPTED), 20, "accepted +%g over 2 workers, want +20",
		     metrics_delta(&m0, &m1, ACCEPTED));
	cr_assert_eq(metrics_delta(&m0, &m1, CLOSED("normal")), 20, "closed normal +%g, want +20",
		     metrics_delta(&m0, &m1, CLOSED("normal")));
	cr_assert_eq(metrics_delta(&m0, &m1, BYTES_C2U), 20000, "client_to_upstream +%g",
		     metrics_delta(&m0, &m1, BYTES_C2U));
	cr_assert_eq(metrics_delta(&m0, &m1, BYTES_U2C), 20000, "upstream_to_client +%g",
		     metrics_delta(&m0, &m1, BYTES_U2C));
	cr_assert_eq(metrics_delta(&m0, &m1, CONNECT_COUNT), 20);
	cr_assert_eq(metrics_val(&m1, ACTIVE), 0);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* ---- access log ------------------------------------------------------------- */

TestSuite(access_log, .init = alog_make, .fini = alog_remove);

struct text_line {
	char time[32], listener[40], client[64], upstream[64], reason[32], truncated[16];
	unsigned long long in, out, ms;
};

/* Parses one text line strictly: every field, in order, nothing more. Every session in these
 * tests comes through the command line's listener, so the line must name "default". */
static void parse_text_line(const char *line, struct text_line *t)
{
	int end = -1;
	struct tm tm;

	memset(t, 0, sizeof(*t));
	cr_assert_eq(sscanf(line,
			    "%31s listener=%39s client=%63s upstream=%63s bytes_in=%llu "
			    "bytes_out=%llu duration_ms=%llu reason=%31s truncated=%15s%n",
			    t->time, t->listener, t->client, t->upstream, &t->in, &t->out, &t->ms,
			    t->reason, t->truncated, &end),
		     9, "bad access-log line '%s'", line);
	cr_assert(end > 0 && line[end] == '\0', "trailing text in '%s'", line);
	cr_assert_str_eq(t->listener, "default", "listener in '%s'", line);
	/* 2026-11-29T03:15:04.992Z, within a minute of now */
	cr_assert_eq(strlen(t->time), 24, "time '%s'", t->time);
	memset(&tm, 0, sizeof(tm));
	{
		const char *rest = strptime(t->time, "%Y-%m-%dT%H:%M:%S", &tm);
		time_t when, now = time(NULL);

		cr_assert(rest && rest[0] == '.' && rest[1] >= '0' && rest[1] <= '9' &&
				  rest[2] >= '0' && rest[2] <= '9' && rest[3] >= '0' &&
				  rest[3] <= '9' && strcmp(rest + 4, "Z") == 0,
			  "time '%s' is not YYYY-MM-DDTHH:MM:SS.mmmZ", t->time);
		when = timegm(&tm);
		cr_assert(when >= now - 60 && when <= now + 1, "time '%s' is not UTC now", t->time);
	}
}

/* Upstream that reads the client's bytes to EOF, then answers 2n+1 bytes and closes. */
static void doubler(int fd, void *arg)
{
	uint64_t n = 0;

	(void)arg;
	if (io_wait_close(fd, 5000, &n) == IO_EOF)
		io_write_stream(fd, 0xd0b, 0, 2 * n + 1, 5000, NULL);
	close(fd);
}

/* A session of n bytes up and 2n+1 down (the doubler); returns the client port and the
 * session's duration as the client saw it. */
static uint16_t doubler_session(const struct proxy *px, uint64_t n, unsigned int pause_ms,
			       uint64_t *ms)
{
	uint64_t t0 = now_ms(), got = 0, sent = 0;
	int fd = tcp_connect(AF_INET, px->port, 2000);
	uint16_t lp;
	enum io_end e;

	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	lp = sock_local_port(fd);
	cr_assert_eq(io_write_stream(fd, 0xd0, 0, n, 3000, &sent), IO_DONE);
	if (pause_ms)
		sleep_ms(pause_ms);
	shutdown(fd, SHUT_WR);
	e = io_wait_close(fd, 5000, &got);
	cr_assert_eq(e, IO_EOF, "session of %llu bytes ended with %s", (unsigned long long)n,
		     io_end_name(e));
	cr_assert_eq(got, 2 * n + 1, "got %llu bytes back, want %llu", (unsigned long long)got,
		     (unsigned long long)(2 * n + 1));
	close(fd);
	*ms = now_ms() - t0;
	return lp;
}

static size_t start_logged(struct backend *b, struct proxy *px, const char *const more[])
{
	const char *extra[11];
	size_t n = 0, len;
	char *s, *probe;

	extra[n++] = "--access-log";
	extra[n++] = alog_path;
	for (size_t i = 0; more && more[i] && n < 10; i++)
		extra[n++] = more[i];
	extra[n] = NULL;
	backend_bind(b, AF_INET);
	{
		struct proxy_cfg cfg = { 0 };

		cfg.up_port = b->port;
		for (size_t i = 0; extra[i]; i++)
			cfg.extra[i] = extra[i];
		proxy_start(px, &cfg);
	}
	/* the readiness probe was a session too: its line comes first */
	probe = alog_wait_lines(alog_path, 0, 1, 1000);
	cr_assert_eq(count_lines(probe), 1, "after start-up the log holds %d lines, want the "
		     "readiness probe's 1:\n%s", count_lines(probe), probe);
	free(probe);
	s = file_read_all(alog_path, &len);
	free(s);
	return len;
}

Test(access_log, text, .timeout = 30)
{
	static const uint64_t sizes[3] = { 100, 2000, 30000 };
	static const unsigned int pauses[3] = { 0, 300, 0 };
	struct backend b;
	struct proxy px;
	struct stat sb;
	uint16_t ports[3];
	uint64_t ms[3];
	size_t base;
	char *tail, line[512], want[64];
	mode_t um = umask(022);

	umask(um);
	base = start_logged(&b, &px, NULL);
	b.handler = doubler;
	backend_run(&b, BK_HANDLER);
	cr_assert_eq(stat(alog_path, &sb), 0);
	cr_assert_eq(sb.st_mode & 0777, 0640 & ~um, "the log was created with mode %o, want %o",
		     sb.st_mode & 0777, 0640 & ~um);
	for (int i = 0; i < 3; i++)
		ports[i] = doubler_session(&px, sizes[i], pauses[i], &ms[i]);
	tail = alog_wait_lines(alog_path, base, 3, 1000);
	cr_assert_eq(count_lines(tail), 3, "%d new lines within 1 s for 3 sessions:\n%s",
		     count_lines(tail), tail);
	for (int i = 0; i < 3; i++) {
		struct text_line t;

		snprintf(want, sizeof(want), " client=127.0.0.1:%u ", ports[i]);
		alog_find_line(tail, want, line, sizeof(line));
		parse_text_line(line, &t);
		snprintf(want, sizeof(want), "127.0.0.1:%u", b.port);
		cr_assert_str_eq(t.upstream, want, "'%s'", line);
		cr_assert_eq(t.in, sizes[i], "bytes_in in '%s', want %llu", line,
			     (unsigned long long)sizes[i]);
		cr_assert_eq(t.out, 2 * sizes[i] + 1, "bytes_out in '%s', want %llu", line,
			     (unsigned long long)(2 * sizes[i] + 1));
		cr_assert_str_eq(t.reason, "normal", "'%s'", line);
		cr_assert_str_eq(t.truncated, "none", "'%s'", line);
		/* the session's own length: at least the client's pause, at most what the client
		 * saw from connect to EOF (plus a little) */
		cr_assert_geq(t.ms, pauses[i], "duration_ms in '%s', the client paused %u ms", line,
			      pauses[i]);
		cr_assert_leq(t.ms, ms[i] + 50, "duration_ms in '%s', the client saw %llu ms", line,
			      (unsigned long long)ms[i]);
	}
	/* the lines come in the order the sessions ended */
	{
		char a[64], c[64];

		snprintf(a, sizeof(a), "client=127.0.0.1:%u ", ports[0]);
		snprintf(c, sizeof(c), "client=127.0.0.1:%u ", ports[2]);
		cr_assert_lt(strstr(tail, a), strstr(tail, c));
	}
	free(tail);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	/* nothing more after exit: no line written twice */
	tail = alog_wait_lines(alog_path, base, 4, 0);
	cr_assert_eq(count_lines(tail), 3, "after exit the log holds %d new lines:\n%s",
		     count_lines(tail), tail);
	free(tail);
	backend_stop(&b);
}

Test(access_log, connect_failed, .timeout = 30)
{
	struct backend dead;
	struct proxy px;
	struct text_line t;
	size_t base;
	char *tail, line[512], want[64];
	uint16_t port;
	int fd;
	enum io_end e;

	/* a single upstream that refuses, and no retry */
	base = start_logged(&dead, &px, ARGS("--retries", "0"));
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	port = sock_local_port(fd);
	e = io_wait_close(fd, 3000, NULL);
	cr_assert(e == IO_EOF || e == IO_RESET, "%s, want the proxy to close", io_end_name(e));
	close(fd);
	tail = alog_wait_lines(alog_path, base, 1, 1000);
	cr_assert_eq(count_lines(tail), 1, "%d new lines for 1 session:\n%s", count_lines(tail),
		     tail);
	snprintf(want, sizeof(want), " client=127.0.0.1:%u ", port);
	alog_find_line(tail, want, line, sizeof(line));
	parse_text_line(line, &t);
	/* README: "upstream is - when no upstream was reached" */
	cr_assert_str_eq(t.upstream, "-", "'%s'", line);
	cr_assert_str_eq(t.reason, "connect_failed", "'%s'", line);
	cr_assert_str_eq(t.truncated, "none", "'%s'", line);
	cr_assert_eq(t.in, 0, "'%s'", line);
	cr_assert_eq(t.out, 0, "'%s'", line);
	free(tail);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&dead);
}

Test(access_log, client_reset, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	struct text_line t;
	size_t base;
	char *tail, line[512], want[64];
	uint8_t *more = malloc(64 * KIB);
	uint16_t port;
	size_t sent = 0;
	int fd;

	cr_assert_not_null(more);
	base = start_logged(&b, &px, NULL);
	backend_run(&b, BK_ECHO);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	port = sock_local_port(fd);
	cr_assert(echo_roundtrip(fd, 0x7e5, 4096, 3000), "echo before the reset failed");
	/* more on the way, its echo left unread, then an RST */
	fill_random(more, 64 * KIB, 0x7e6, 0);
	io_write_all(fd, more, 64 * KIB, 1000, &sent);
	close_rst(fd);
	tail = alog_wait_lines(alog_path, base, 1, 1000);
	cr_assert_eq(count_lines(tail), 1, "%d new lines for 1 session:\n%s", count_lines(tail),
		     tail);
	snprintf(want, sizeof(want), " client=127.0.0.1:%u ", port);
	alog_find_line(tail, want, line, sizeof(line));
	parse_text_line(line, &t);
	snprintf(want, sizeof(want), "127.0.0.1:%u", b.port);
	cr_assert_str_eq(t.upstream, want, "'%s'", line);
	cr_assert_str_eq(t.reason, "client_reset", "'%s'", line);
	cr_assert(t.in >= 4096 && t.in <= 4096 + sent, "bytes_in in '%s', want 4096..%zu", line,
		  4096 + sent);
	cr_assert(t.out >= 4096 && t.out <= t.in, "bytes_out in '%s', want 4096..bytes_in", line);
	free(tail);
	free(more);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* A flat JSON object of string and unsigned integer values, without escapes: the keys in
 * order, and each value as text (strings without their quotes). */
struct jobj {
	int n;
	char key[16][48];
	char val[16][80];
	bool str[16];
};

static void parse_json_line(const char *s, struct jobj *o)
{
	const char *p = s;

	memset(o, 0, sizeof(*o));
	cr_assert_eq(*p++, '{', "'%s' does not start with {", s);
	for (;;) {
		const char *q;
		size_t k;

		cr_assert_lt(o->n, 16);
		cr_assert_eq(*p++, '"', "a key does not start with a quote in '%s'", s);
		q = strchr(p, '"');
		cr_assert_not_null(q);
		k = (size_t)(q - p);
		cr_assert(k > 0 && k < sizeof(o->key[0]));
		memcpy(o->key[o->n], p, k);
		p = q + 1;
		cr_assert_eq(*p++, ':', "no colon after \"%s\" in '%s'", o->key[o->n], s);
		if (*p == '"') {
			p++;
			q = strchr(p, '"');
			cr_assert_not_null(q);
			k = (size_t)(q - p);
			cr_assert(memchr(p, '\\', k) == NULL, "escape in '%s'", s);
			o->str[o->n] = true;
			p = q + 1;
			q -= k;
		} else {
			q = p;
			while (*p >= '0' && *p <= '9')
				p++;
			k = (size_t)(p - q);
			cr_assert_gt(k, 0, "value of \"%s\" is neither a string nor a number in '%s'",
				     o->key[o->n], s);
		}
		cr_assert_lt(k, sizeof(o->val[0]));
		memcpy(o->val[o->n], q, k);
		o->n++;
		if (*p == ',') {
			p++;
			continue;
		}
		cr_assert_eq(*p++, '}', "'%s' does not end with }", s);
		cr_assert_eq(*p, '\0', "trailing text in '%s'", s);
		return;
	}
}

Test(access_log, json, .timeout = 30)
{
	static const char *const keys[] = { "time", "listener", "client", "upstream",
					    "bytes_client_to_upstream",
					    "bytes_upstream_to_client", "duration_ms", "reason",
					    "truncated" };
	static const bool is_str[] = { true, true, true, true, false, false, false, true, true };
	static const uint64_t sizes[2] = { 10, 5000 };
	struct backend b;
	struct proxy px;
	size_t base;
	char *tail, line[512], want[64];
	uint16_t ports[2];
	uint64_t ms;

	base = start_logged(&b, &px, ARGS("--log-format", "json"));
	b.handler = doubler;
	backend_run(&b, BK_HANDLER);
	for (int i = 0; i < 2; i++)
		ports[i] = doubler_session(&px, sizes[i], 0, &ms);
	tail = alog_wait_lines(alog_path, base, 2, 1000);
	cr_assert_eq(count_lines(tail), 2, "%d new lines for 2 sessions:\n%s", count_lines(tail),
		     tail);
	for (int i = 0; i < 2; i++) {
		struct jobj o;
		char num[32];

		snprintf(want, sizeof(want), "\"client\":\"127.0.0.1:%u\"", ports[i]);
		alog_find_line(tail, want, line, sizeof(line));
		cr_assert_eq(line[0], '{');
		cr_assert_eq(line[strlen(line) - 1], '}');
		cr_assert_not_null(strstr(line, "\"reason\":\"normal\""), "'%s'", line);
		parse_json_line(line, &o);
		cr_assert_eq(o.n, 9, "%d keys in '%s', want 9", o.n, line);
		for (int k = 0; k < 9; k++) {
			cr_assert_str_eq(o.key[k], keys[k], "key %d of '%s'", k, line);
			cr_assert_eq(o.str[k], is_str[k], "type of \"%s\" in '%s'", keys[k], line);
		}
		cr_assert_eq(strlen(o.val[0]), 24, "time '%s'", o.val[0]);
		cr_assert_eq(o.val[0][23], 'Z');
		cr_assert_str_eq(o.val[1], "default", "listener in '%s'", line);
		snprintf(want, sizeof(want), "127.0.0.1:%u", ports[i]);
		cr_assert_str_eq(o.val[2], want);
		snprintf(want, sizeof(want), "127.0.0.1:%u", b.port);
		cr_assert_str_eq(o.val[3], want);
		snprintf(num, sizeof(num), "%llu", (unsigned long long)sizes[i]);
		cr_assert_str_eq(o.val[4], num, "bytes_client_to_upstream in '%s'", line);
		snprintf(num, sizeof(num), "%llu", (unsigned long long)(2 * sizes[i] + 1));
		cr_assert_str_eq(o.val[5], num, "bytes_upstream_to_client in '%s'", line);
		cr_assert_str_eq(o.val[7], "normal");
	}
	free(tail);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(ops, access_log_stdout, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	char *out, want[64], line[512];
	uint16_t ports[2];
	int lines;

	setup_echo(&b, &px, ARGS("--access-log", "-"));
	for (int i = 0; i < 2; i++)
		ports[i] = echo_session(&px, 1234, 0x5d + (uint64_t)i);
	sleep_ms(100);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	out = proc_stdout(&px.proc);
	lines = count_lines(out);
	/* the readiness probe's line, and one per session */
	cr_assert_eq(lines, 3, "stdout holds %d lines, want 3:\n%s", lines, out);
	for (int i = 0; i < 2; i++) {
		struct text_line t;

		snprintf(want, sizeof(want), " client=127.0.0.1:%u ", ports[i]);
		alog_find_line(out, want, line, sizeof(line));
		parse_text_line(line, &t);
		cr_assert_eq(t.in, 1234, "'%s'", line);
		cr_assert_eq(t.out, 1234, "'%s'", line);
		cr_assert_str_eq(t.reason, "normal", "'%s'", line);
		cr_assert_str_eq(t.truncated, "none", "'%s'", line);
	}
	free(out);
	backend_stop(&b);
}

/* ---- command-line errors ------------------------------------------------------ */

static void expect_exit(int want, const char *const args[], const char *needle)
{
	struct run_result r;

	run_uproxy(&r, 3000, args);
	cr_assert(r.exited, "uproxy still running after 3 s (want exit %d); stderr:\n%s", want,
		  r.err);
	cr_assert_eq(r.code, want, "uproxy exited %d, want %d; stderr:\n%s", r.code, want, r.err);
	cr_assert_not_null(strstr(r.err, needle), "stderr does not name '%s':\n%s", needle, r.err);
	run_result_free(&r);
}

static char L[32], U[32];

static void addrs(void)
{
	snprintf(L, sizeof(L), "127.0.0.1:%u", free_port());
	snprintf(U, sizeof(U), "127.0.0.1:%u", free_port());
}

Test(ops, bad_log_format, .timeout = 15)
{
	addrs();
	expect_exit(2, ARGS("--listen", L, "--upstream", U, "--access-log", "-", "--log-format",
			    "xml"),
		    "xml");
}

Test(ops, bad_access_log_path, .timeout = 15)
{
	addrs();
	expect_exit(1, ARGS("--listen", L, "--upstream", U, "--access-log",
			    "/nonexistent-dir/x.log"),
		    "/nonexistent-dir/x.log");
}

Test(ops, bad_stats_port_zero, .timeout = 15)
{
	addrs();
	expect_exit(2, ARGS("--listen", L, "--upstream", U, "--stats", "127.0.0.1:0"), "--stats");
}

Test(ops, stats_port_in_use, .timeout = 15)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t l = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char S[32];

	addrs();
	cr_assert_geq(fd, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(fd, 8), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	snprintf(S, sizeof(S), "127.0.0.1:%u", ntohs(a.sin_port));
	/* The listen port comes from free_port(): a test running in parallel may take it
	 * between the pick and the bind, and then the listener, not --stats, is what is in use
	 * (seen once in ~10 ASan runs). Only that case is retried, with new ports. */
	for (int tries = 0;; tries++) {
		struct run_result r;
		bool listener_taken;

		run_uproxy(&r, 3000, ARGS("--listen", L, "--upstream", U, "--stats", S));
		cr_assert(r.exited, "uproxy still running after 3 s (want exit 1); stderr:\n%s",
			  r.err);
		listener_taken = strstr(r.err, "listener 'default'") != NULL &&
				 strstr(r.err, "in use") != NULL;
		if (listener_taken && tries < 5) {
			run_result_free(&r);
			addrs();
			continue;
		}
		cr_assert_eq(r.code, 1, "uproxy exited %d, want 1; stderr:\n%s", r.code, r.err);
		cr_assert_not_null(strstr(r.err, "--stats"), "stderr does not name '--stats':\n%s",
				   r.err);
		run_result_free(&r);
		break;
	}
	close(fd);
}
