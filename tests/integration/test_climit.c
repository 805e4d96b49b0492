/* Per-client limits (--max-conns-per-client, --rate-per-client/--rate-burst,
 * --client-table-size/--client-table-full) against the real binary, with clients bound to many
 * source addresses of 127.0.0.0/8: a client over a limit is closed at once (EOF or RST within
 * REFUSE_MS, nothing reaches the upstream) while other clients are served; a closed connection
 * gives its place back; the token bucket passes its burst, then about rate x elapsed; a full
 * table refuses new addresses (closed) or lets them in (open); every refusal is counted in
 * uproxy_connections_limited_total{listener="default",limit="conns|rate|table"}; with two
 * workers the connection limit still holds exactly (reuseport steering by client address);
 * refused connections leave no socket or fd behind. */
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

/* A refused client is closed in the completion of its accept, well under 1 ms on loopback;
 * 100 ms leaves a 100x margin for a loaded 2-core machine. */
#define REFUSE_MS 100
#define KEY_CONNS "uproxy_connections_limited_total{listener=\"default\",limit=\"conns\"}"
#define KEY_RATE  "uproxy_connections_limited_total{listener=\"default\",limit=\"rate\"}"
#define KEY_TABLE "uproxy_connections_limited_total{listener=\"default\",limit=\"table\"}"
#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define PING	  32 /* bytes of one round trip that proves a connection is served */

/* A connected non-blocking IPv4 socket from src (port 0) to 127.0.0.1:port; asserts, waits
 * at most 2 s. */
static int connect_from(const char *src, uint16_t port)
{
	struct sockaddr_in s = { .sin_family = AF_INET }, d = { .sin_family = AF_INET };
	socklen_t elen = sizeof(int);
	struct pollfd p;
	int fd, err = 0;

	cr_assert_eq(inet_pton(AF_INET, src, &s.sin_addr), 1, "bad source %s", src);
	d.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	d.sin_port = htons(port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(bind(fd, (struct sockaddr *)&s, sizeof(s)), 0, "bind %s: %s", src,
		     strerror(errno));
	if (connect(fd, (struct sockaddr *)&d, sizeof(d)) < 0) {
		cr_assert_eq(errno, EINPROGRESS, "connect from %s: %s", src, strerror(errno));
		p = (struct pollfd){ .fd = fd, .events = POLLOUT };
		cr_assert_eq(poll(&p, 1, 2000), 1, "connect from %s: not done in 2 s", src);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
		cr_assert_eq(err, 0, "connect from %s: %s", src, strerror(err));
	}
	return fd;
}

enum outcome { SERVED, REFUSED, STUCK };

static const char *outcome_name(enum outcome o)
{
	return o == SERVED ? "served" : o == REFUSED ? "refused" : "neither served nor closed";
}

/* What happened to the client on fd: SERVED when PING bytes of stream seed come back intact
 * (the connection stays open), REFUSED when the proxy closed it (EOF or RST, nothing
 * received), STUCK otherwise (within 3 s). *ms gets the time to the outcome. */
static enum outcome try_conn(int fd, uint64_t seed, uint64_t *ms)
{
	uint8_t out[PING], in[PING];
	uint64_t t0 = now_ms();
	size_t done = 0;
	enum io_end e;

	fill_random(out, sizeof(out), seed, 0);
	e = io_write_all(fd, out, sizeof(out), 3000, &done);
	if (e == IO_DONE)
		e = io_read_exact(fd, in, sizeof(in), 3000, &done);
	else
		done = 0;
	if (ms)
		*ms = now_ms() - t0;
	if (e == IO_DONE)
		return memcmp(in, out, sizeof(in)) == 0 ? SERVED : STUCK;
	if ((e == IO_EOF || e == IO_RESET) && done == 0)
		return REFUSED;
	return STUCK;
}

/* Asserts the client on fd is served (and keeps it open). */
static void expect_served(int fd, uint64_t seed, const char *what)
{
	enum outcome o = try_conn(fd, seed, NULL);

	cr_assert_eq(o, SERVED, "%s: %s, want served", what, outcome_name(o));
}

/* Asserts the client on fd is refused within REFUSE_MS, and closes fd. */
static void expect_refused(int fd, uint64_t seed, const char *what)
{
	uint64_t ms;
	enum outcome o = try_conn(fd, seed, &ms);

	cr_assert_eq(o, REFUSED, "%s: %s, want refused", what, outcome_name(o));
	cr_assert_leq(ms, REFUSE_MS, "%s: refused only after %llu ms (want ≤ %d)", what,
		      (unsigned long long)ms, REFUSE_MS);
	close(fd);
}

/* Starts an echo backend and the proxy with --stats on a free port and more arguments
 * (NULL-terminated). Returns the stats port. */
static uint16_t start(struct backend *b, struct proxy *px, const char *const more[])
{
	static char sarg[32];
	const char *extra[12];
	uint16_t sport = free_port();
	size_t n = 0;

	snprintf(sarg, sizeof(sarg), "127.0.0.1:%u", sport);
	extra[n++] = "--stats";
	extra[n++] = sarg;
	for (size_t i = 0; more && more[i]; i++) {
		cr_assert_lt(n, 11, "too many arguments");
		extra[n++] = more[i];
	}
	extra[n] = NULL;
	raise_nofile();
	setup(b, px, BK_ECHO, extra);
	return sport;
}

/* Scrapes until key == want (≤ timeout_ms: the workers publish their counters periodically)
 * and asserts it; a missing key is a failure too. */
static void metric_expect(uint16_t sport, const char *key, double want, int timeout_ms)
{
	static struct mset m;
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	double v = NAN;
	bool have;

	do {
		metrics_scrape(sport, &m);
		have = metrics_get(&m, key, &v);
		if (have && v == want)
			return;
		sleep_ms(20);
	} while (now_ms() < deadline);
	cr_assert(have, "/metrics has no %s", key);
	cr_assert_eq(v, want, "%s = %g, want %g", key, v, want);
}

/* Waits ≤ 2 s for the proxy to hold exactly 2 x sessions sockets for its ports (client and
 * upstream side of each session): refused clients hold none. */
static void expect_sessions(const struct proxy *px, int sessions, const char *what)
{
	int socks = -1;

	for (int i = 0; i < 200; i++) {
		socks = proxy_sock_count(px->port, px->up_port);
		if (socks == 2 * sessions)
			return;
		sleep_ms(10);
	}
	cr_assert_fail("%s: the proxy holds %d sockets, want %d (2 per served session)", what,
		       socks, 2 * sessions);
}

static void finish(struct backend *b, struct proxy *px, const char *what)
{
	assert_proxy_idle(px, 3000, what);
	cr_assert(proxy_stop(px), "proxy did not exit 0 on SIGTERM");
	backend_stop(b);
}

Test(climit, max_conns_per_client, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	int a[5], c[5];
	uint16_t sport;

	sport = start(&b, &px, ARGS("--workers", "1", "--max-conns-per-client", "5"));
	for (int i = 0; i < 5; i++) {
		a[i] = connect_from("127.0.0.2", px.port);
		expect_served(a[i], 0x200 + (uint64_t)i, "127.0.0.2, one of its first 5");
	}
	expect_refused(connect_from("127.0.0.2", px.port), 0x206, "127.0.0.2, its 6th");
	cr_assert_eq(atomic_load(&b.accepted), 5, "the upstream saw %d connections, want 5",
		     atomic_load(&b.accepted));
	for (int i = 0; i < 5; i++) {
		c[i] = connect_from("127.0.0.3", px.port);
		expect_served(c[i], 0x300 + (uint64_t)i, "127.0.0.3, one of its 5");
	}
	expect_refused(connect_from("127.0.0.3", px.port), 0x306, "127.0.0.3, its 6th");
	expect_sessions(&px, 10, "5 + 5 served, 2 refused");
	cr_assert_eq(atomic_load(&b.accepted), 10, "the upstream saw %d connections, want 10",
		     atomic_load(&b.accepted));

	/* one of 127.0.0.2's ends: once its session is gone, a new one fits, and only one */
	close(a[0]);
	expect_sessions(&px, 9, "after one of 127.0.0.2's closed");
	a[0] = connect_from("127.0.0.2", px.port);
	expect_served(a[0], 0x207, "127.0.0.2 after one of its 5 closed");
	expect_refused(connect_from("127.0.0.2", px.port), 0x208, "127.0.0.2, a 6th again");
	metric_expect(sport, KEY_CONNS, 3, 2000);
	metric_expect(sport, KEY_RATE, 0, 2000);
	metric_expect(sport, KEY_TABLE, 0, 2000);
	for (int i = 0; i < 5; i++) {
		close(a[i]);
		close(c[i]);
	}
	finish(&b, &px, "after the connection-limit test");
}

Test(climit, rate_per_client, .timeout = 30) /* serial */
{
	/* 10 per second, bucket 10. The 11 connections of the burst are queued in ≈ 1 ms and
	 * accepted in order: a token takes 100 ms to come back, so exactly the first 10 pass.
	 * 200 ms after the burst was decided, 2 tokens have come back, exactly (no drift); a
	 * third only if more than 300 ms passed since the first admission, which the measured
	 * span bounds. */
	struct backend b;
	struct proxy px;
	int fds[11], late[4], served = 0, late_served = 0, max_late;
	uint64_t a, c, l1;
	uint16_t sport;
	enum outcome o[11];

	sport = start(&b, &px,
		      ARGS("--workers", "1", "--rate-per-client", "10", "--rate-burst", "10"));
	a = now_ms();
	for (int i = 0; i < 11; i++)
		fds[i] = connect_from("127.0.0.2", px.port);
	for (int i = 0; i < 11; i++) {
		o[i] = try_conn(fds[i], 0x400 + (uint64_t)i, NULL);
		cr_assert_neq(o[i], STUCK, "burst connection %d: %s", i, outcome_name(o[i]));
		served += o[i] == SERVED;
	}
	c = now_ms(); /* every admission of the burst happened before this */
	cr_assert_eq(served, 10, "%d of 11 immediate connections passed, want 10", served);
	cr_assert_eq(o[10], REFUSED, "the 11th (accepted last) was %s", outcome_name(o[10]));
	cr_assert_eq(atomic_load(&b.accepted), 10, "the upstream saw %d connections, want 10",
		     atomic_load(&b.accepted));
	for (int i = 0; i < 11; i++)
		close(fds[i]);
	/* a different client has its own bucket */
	fds[0] = connect_from("127.0.0.3", px.port);
	expect_served(fds[0], 0x4ff, "127.0.0.3 while 127.0.0.2 is out of tokens");
	close(fds[0]);

	if (now_ms() < c + 200)
		sleep_ms((unsigned int)(c + 200 - now_ms()));
	for (int i = 0; i < 4; i++)
		late[i] = connect_from("127.0.0.2", px.port);
	for (int i = 0; i < 4; i++) {
		enum outcome lo = try_conn(late[i], 0x500 + (uint64_t)i, NULL);

		cr_assert_neq(lo, STUCK, "late connection %d: %s", i, outcome_name(lo));
		if (i < 2)
			cr_assert_eq(lo, SERVED, "late connection %d (200 ms = 2 tokens later): %s",
				     i, outcome_name(lo));
		late_served += lo == SERVED;
	}
	l1 = now_ms();
	max_late = (int)((l1 - a) / 100) < 4 ? (int)((l1 - a) / 100) : 4;
	cr_log_info("after 200 ms: %d of 4 passed; %llu ms from the burst to the last decision",
		    late_served, (unsigned long long)(l1 - a));
	cr_assert(late_served >= 2 && late_served <= max_late,
		  "%d of 4 passed 200 ms after the burst, want 2..%d (%llu ms after the first "
		  "admission at most)", late_served, max_late, (unsigned long long)(l1 - a));
	for (int i = 0; i < 4; i++)
		close(late[i]);
	metric_expect(sport, KEY_RATE, 1 + 4 - late_served, 2000);
	metric_expect(sport, KEY_CONNS, 0, 2000);
	finish(&b, &px, "after the rate test");
}

/* 200 clients 127.0.1.1..200, each holding one connection, against a 64-entry table on one
 * worker; returns how many were served (the rest were refused). */
static int fill_table(struct proxy *px, int *fds, bool fail_open)
{
	int served = 0;

	for (int i = 0; i < 200; i++) {
		char src[32];
		enum outcome o;

		snprintf(src, sizeof(src), "127.0.1.%d", i + 1);
		fds[i] = connect_from(src, px->port);
		o = try_conn(fds[i], 0x600 + (uint64_t)i, NULL);
		cr_assert_neq(o, STUCK, "%s: %s", src, outcome_name(o));
		if (fail_open)
			cr_assert_eq(o, SERVED, "%s refused by a table that fails open", src);
		if (o == SERVED) {
			served++;
		} else {
			close(fds[i]);
			fds[i] = -1;
		}
	}
	return served;
}

Test(climit, table_full_closed, .timeout = 60)
{
	/* 64 entries of which each live client holds one: the table fills (8-slot windows
	 * over 64 slots: 200 addresses fill every slot; 20,000 simulated seeds all served 64),
	 * so 64 are served and 136 refused; 56 allows for an unlucky seed. */
	struct backend b;
	struct proxy px;
	int fds[200], served;
	uint16_t sport;

	sport = start(&b, &px,
		      ARGS("--workers", "1", "--max-conns-per-client", "2", "--client-table-size",
			   "64", "--client-table-full", "closed"));
	served = fill_table(&px, fds, false);
	cr_log_info("table of 64, fail closed: %d of 200 clients served", served);
	cr_assert_leq(served, 64, "%d clients served by a 64-entry table failing closed", served);
	cr_assert_geq(served, 56, "only %d of 64 table entries used by 200 clients", served);
	expect_sessions(&px, served, "with the table full");
	cr_assert_eq(atomic_load(&b.accepted), served, "the upstream saw %d connections, %d "
		     "served", atomic_load(&b.accepted), served);
	metric_expect(sport, KEY_TABLE, 200 - served, 2000);
	metric_expect(sport, KEY_CONNS, 0, 2000);
	/* a served client is still known, so its limit still holds: its third is refused */
	for (int i = 0; i < 200; i++) {
		char src[32];

		if (fds[i] < 0)
			continue;
		snprintf(src, sizeof(src), "127.0.1.%d", i + 1);
		int second = connect_from(src, px.port);

		expect_served(second, 0x700, "a known client's second connection");
		expect_refused(connect_from(src, px.port), 0x701, "a known client's third");
		close(second);
		break;
	}
	metric_expect(sport, KEY_CONNS, 1, 2000);
	for (int i = 0; i < 200; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	finish(&b, &px, "after the full table (closed)");
}

Test(climit, table_full_open, .timeout = 60)
{
	struct backend b;
	struct proxy px;
	int fds[200], served;
	uint16_t sport;

	sport = start(&b, &px,
		      ARGS("--workers", "1", "--max-conns-per-client", "2", "--client-table-size",
			   "64", "--client-table-full", "open"));
	served = fill_table(&px, fds, true);
	cr_assert_eq(served, 200);
	expect_sessions(&px, 200, "200 clients through a full table that fails open");
	cr_assert_eq(atomic_load(&b.accepted), 200);
	metric_expect(sport, KEY_TABLE, 0, 2000);
	for (int i = 0; i < 200; i++)
		close(fds[i]);
	finish(&b, &px, "after the full table (open)");
}

Test(climit, workers2_max_conns_exact, .timeout = 60)
{
	/* 12 clients, 8 connections each, 2 workers, limit 5: without steering by address the
	 * two workers' tables would each admit up to 5 of a client's connections. */
	struct backend b;
	struct proxy px;
	int fds[12][8], total = 0;
	uint16_t sport;

	sport = start(&b, &px, ARGS("--workers", "2", "--max-conns-per-client", "5"));
	for (int k = 0; k < 12; k++) {
		char src[32];
		int served = 0;

		snprintf(src, sizeof(src), "127.0.2.%d", 10 + 7 * k);
		for (int i = 0; i < 8; i++) {
			enum outcome o;

			fds[k][i] = connect_from(src, px.port);
			o = try_conn(fds[k][i], 0x800 + (uint64_t)(k * 8 + i), NULL);
			cr_assert_neq(o, STUCK, "%s connection %d: %s", src, i, outcome_name(o));
			if (o == SERVED) {
				served++;
			} else {
				close(fds[k][i]);
				fds[k][i] = -1;
			}
		}
		cr_assert_eq(served, 5, "%s: %d of 8 connections served on 2 workers, want 5", src,
			     served);
		total += served;
	}
	expect_sessions(&px, total, "12 x 5 served");
	metric_expect(sport, KEY_CONNS, 12 * 3, 2000);
	for (int k = 0; k < 12; k++)
		for (int i = 0; i < 8; i++)
			if (fds[k][i] >= 0)
				close(fds[k][i]);
	finish(&b, &px, "after 2 workers");
}
