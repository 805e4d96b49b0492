/* Per-client limits (--max-conns-per-client, --rate-per-client/--rate-burst,
 * --client-table-size/--client-table-full) against the real binary, with clients bound to many
 * source addresses of 127.0.0.0/8: a client over a limit is closed at once (EOF or RST within
 * REFUSE_MS, nothing reaches the upstream) while other clients are served; a closed connection
 * gives its place back; the token bucket passes its burst, then about rate x elapsed; a full
 * table refuses new addresses (closed) or lets them in (open); every refusal is counted in
 * uproxy_connections_limited_total{listener="default",limit="conns|rate|table"}; with two
 * workers the connection limit still holds exactly (reuseport steering by client address),
 * also when a SIGHUP adds the limit to a running listener, and a SIGHUP that removes the last
 * limit takes the steering off again; refused connections leave no socket or fd behind. */
#include "harness.h"

#include <criterion/criterion.h>
#include <signal.h>
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

/* Waits ≤ 2 s for the proxy to hold exactly 2 x sessions sockets for its ports (client and
 * upstream side of each session): refused clients hold none. */
static void expect_sessions(const struct proxy *px, int sessions, const char *what)
{
	int socks = -1;

	for (int i = 0; i < 200; i++) {
		socks = proxy_sock_count_pid(px->proc.pid, px->port, px->up_port);
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
		a[i] = tcp_connect_from("127.0.0.2", px.port);
		expect_served(a[i], 0x200 + (uint64_t)i, "127.0.0.2, one of its first 5");
	}
	expect_refused(tcp_connect_from("127.0.0.2", px.port), 0x206, "127.0.0.2, its 6th");
	cr_assert_eq(atomic_load(&b.accepted), 5, "the upstream saw %d connections, want 5",
		     atomic_load(&b.accepted));
	for (int i = 0; i < 5; i++) {
		c[i] = tcp_connect_from("127.0.0.3", px.port);
		expect_served(c[i], 0x300 + (uint64_t)i, "127.0.0.3, one of its 5");
	}
	expect_refused(tcp_connect_from("127.0.0.3", px.port), 0x306, "127.0.0.3, its 6th");
	expect_sessions(&px, 10, "5 + 5 served, 2 refused");
	cr_assert_eq(atomic_load(&b.accepted), 10, "the upstream saw %d connections, want 10",
		     atomic_load(&b.accepted));

	/* one of 127.0.0.2's ends: once its session is gone, a new one fits, and only one */
	close(a[0]);
	expect_sessions(&px, 9, "after one of 127.0.0.2's closed");
	a[0] = tcp_connect_from("127.0.0.2", px.port);
	expect_served(a[0], 0x207, "127.0.0.2 after one of its 5 closed");
	expect_refused(tcp_connect_from("127.0.0.2", px.port), 0x208, "127.0.0.2, a 6th again");
	metrics_wait(sport, KEY_CONNS, 3, 2000, NULL);
	metrics_wait(sport, KEY_RATE, 0, 2000, NULL);
	metrics_wait(sport, KEY_TABLE, 0, 2000, NULL);
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
		fds[i] = tcp_connect_from("127.0.0.2", px.port);
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
	fds[0] = tcp_connect_from("127.0.0.3", px.port);
	expect_served(fds[0], 0x4ff, "127.0.0.3 while 127.0.0.2 is out of tokens");
	close(fds[0]);

	if (now_ms() < c + 200)
		sleep_ms((unsigned int)(c + 200 - now_ms()));
	for (int i = 0; i < 4; i++)
		late[i] = tcp_connect_from("127.0.0.2", px.port);
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
	metrics_wait(sport, KEY_RATE, 1 + 4 - late_served, 2000, NULL);
	metrics_wait(sport, KEY_CONNS, 0, 2000, NULL);
	finish(&b, &px, "after the rate test");
}

/* Starts the proxy (one worker, --max-conns-per-client 2, a 64-entry table failing open or
 * closed as full says) and 200 clients 127.0.1.1..200, each holding one connection; returns
 * how many were served (the rest were refused), and the stats port in *sport. */
static int fill_table(struct backend *b, struct proxy *px, int *fds, const char *full,
		      uint16_t *sport)
{
	bool fail_open = strcmp(full, "open") == 0;
	int served = 0;

	*sport = start(b, px,
		       ARGS("--workers", "1", "--max-conns-per-client", "2", "--client-table-size",
			    "64", "--client-table-full", full));

	for (int i = 0; i < 200; i++) {
		char src[32];
		enum outcome o;

		snprintf(src, sizeof(src), "127.0.1.%d", i + 1);
		fds[i] = tcp_connect_from(src, px->port);
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

	served = fill_table(&b, &px, fds, "closed", &sport);
	cr_log_info("table of 64, fail closed: %d of 200 clients served", served);
	cr_assert_leq(served, 64, "%d clients served by a 64-entry table failing closed", served);
	cr_assert_geq(served, 56, "only %d of 64 table entries used by 200 clients", served);
	expect_sessions(&px, served, "with the table full");
	cr_assert_eq(atomic_load(&b.accepted), served, "the upstream saw %d connections, %d "
		     "served", atomic_load(&b.accepted), served);
	metrics_wait(sport, KEY_TABLE, 200 - served, 2000, NULL);
	metrics_wait(sport, KEY_CONNS, 0, 2000, NULL);
	/* a served client is still known, so its limit still holds: its third is refused */
	for (int i = 0; i < 200; i++) {
		char src[32];

		if (fds[i] < 0)
			continue;
		snprintf(src, sizeof(src), "127.0.1.%d", i + 1);
		int second = tcp_connect_from(src, px.port);

		expect_served(second, 0x700, "a known client's second connection");
		expect_refused(tcp_connect_from(src, px.port), 0x701, "a known client's third");
		close(second);
		break;
	}
	metrics_wait(sport, KEY_CONNS, 1, 2000, NULL);
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

	served = fill_table(&b, &px, fds, "open", &sport);
	cr_assert_eq(served, 200);
	expect_sessions(&px, 200, "200 clients through a full table that fails open");
	cr_assert_eq(atomic_load(&b.accepted), 200);
	metrics_wait(sport, KEY_TABLE, 0, 2000, NULL);
	for (int i = 0; i < 200; i++)
		close(fds[i]);
	finish(&b, &px, "after the full table (open)");
}

/* Opens 8 connections from each of 12 addresses 127.0.NET.(10 + 7k), one address after the
 * other, keeping the served ones open in fds (-1 where refused), and asserts that exactly 5 of
 * each address's 8 are served (limit 5): with 2 workers that holds only if every connection of
 * an address lands on the same worker, else each worker's table admits up to 5 of them. */
static void hold_12x8(const struct proxy *px, int fds[12][8], int net, uint64_t seed,
		      const char *what)
{
	for (int k = 0; k < 12; k++) {
		char src[32];
		int served = 0;

		snprintf(src, sizeof(src), "127.0.%d.%d", net, 10 + 7 * k);
		for (int i = 0; i < 8; i++) {
			enum outcome o;

			fds[k][i] = tcp_connect_from(src, px->port);
			o = try_conn(fds[k][i], seed + (uint64_t)(k * 8 + i), NULL);
			cr_assert_neq(o, STUCK, "%s: %s connection %d: %s", what, src, i,
				      outcome_name(o));
			if (o == SERVED) {
				served++;
			} else {
				close(fds[k][i]);
				fds[k][i] = -1;
			}
		}
		cr_assert_eq(served, 5, "%s: %s: %d of 8 connections served on 2 workers, want 5",
			     what, src, served);
	}
}

/* Closes the connections hold_12x8 kept open. */
static void close_held(int fds[12][8])
{
	for (int k = 0; k < 12; k++)
		for (int i = 0; i < 8; i++)
			if (fds[k][i] >= 0)
				close(fds[k][i]);
}

Test(climit, workers2_max_conns_exact, .timeout = 60)
{
	/* 12 clients, 8 connections each, 2 workers, limit 5: without steering by address the
	 * two workers' tables would each admit up to 5 of a client's connections. */
	struct backend b;
	struct proxy px;
	int fds[12][8];
	uint16_t sport;

	sport = start(&b, &px, ARGS("--workers", "2", "--max-conns-per-client", "5"));
	hold_12x8(&px, fds, 2, 0x800, "started with the limit");
	expect_sessions(&px, 12 * 5, "12 x 5 served");
	metrics_wait(sport, KEY_CONNS, 12 * 3, 2000, NULL);
	close_held(fds);
	finish(&b, &px, "after 2 workers");
}

/* ---- limits changed by SIGHUP ----------------------------------------------------- */

/* A config file for the top-level listener ("default") on 2 workers with --stats, in front of
 * one echo backend or two in roundrobin, with more lines (the limits) a SIGHUP may change. */
struct cfile {
	char dir[64], path[128];
	struct backend *bk[2];
	int nbk;
	uint16_t port, sport;
	const char *more;
	int reloads; /* SIGHUPs applied so far */
};

/* Writes the file for the listen port (proxy_spawn_listen's hook; also used to rewrite it). */
static void cfile_write(uint16_t port, void *arg)
{
	struct cfile *c = arg;
	char ups[96] = "";

	for (int i = 0; i < c->nbk; i++)
		snprintf(ups + strlen(ups), sizeof(ups) - strlen(ups), "upstream 127.0.0.1:%u\n",
			 c->bk[i]->port);
	c->port = port;
	file_write_atomic(c->path,
			  "# written by test_climit.c\n"
			  "workers 2\n"
			  "stats 127.0.0.1:%u\n"
			  "listen 127.0.0.1:%u\n"
			  "balance roundrobin\n"
			  "%s%s",
			  c->sport, port, ups, c->more);
}

/* Starts uproxy --config on the file (more: its limit lines) in front of the running echo
 * backends bk[0..n), without a readiness session. */
static void cfile_start(struct proxy *px, struct cfile *c, struct backend *const bk[], int n,
			const char *more)
{
	memset(c, 0, sizeof(*c));
	conf_dir_make(c->dir, sizeof(c->dir));
	snprintf(c->path, sizeof(c->path), "%s/uproxy.conf", c->dir);
	for (int i = 0; i < n; i++)
		c->bk[i] = bk[i];
	c->nbk = n;
	c->sport = free_port();
	c->more = more;
	raise_nofile();
	proxy_spawn_listen(px, NULL, bk[0]->port, ARGS("--config", c->path), cfile_write, c);
}

/* Rewrites the file with more and sends SIGHUP, twice: the control thread builds a reload only
 * once every worker has taken the previous one's plan (and applies it as it takes it), so when
 * the second is counted, the first is in force in both workers. */
static void cfile_reload(struct proxy *px, struct cfile *c, const char *more)
{
	c->more = more;
	cfile_write(c->port, c);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(kill(px->proc.pid, SIGHUP), 0);
		c->reloads++;
		metrics_wait(c->sport, "uproxy_config_reloads_total{result=\"ok\"}", c->reloads,
			     2000, "SIGHUP");
	}
}

/* SIGHUP adds max-conns-per-client to a listener started without one (its sockets kept): the
 * limit holds exactly on 2 workers, so steering by client address is attached then, not only
 * when a listener is bound with a limit. */
Test(climit, sighup_adds_limit_steered, .timeout = 60, .fini = conf_dir_remove)
{
	static struct cfile c;
	struct backend b;
	struct proxy px;
	int fds[12][8];

	backend_bind(&b, AF_INET);
	backend_run(&b, BK_ECHO);
	cfile_start(&px, &c, (struct backend *const[]){ &b }, 1, "");
	/* no limit yet: 8 connections of one address are all served */
	for (int i = 0; i < 8; i++) {
		fds[0][i] = tcp_connect_from("127.0.3.1", px.port);
		expect_served(fds[0][i], 0xa00 + (uint64_t)i, "127.0.3.1 before the SIGHUP");
	}
	for (int i = 0; i < 8; i++)
		close(fds[0][i]);
	expect_sessions(&px, 0, "before the SIGHUP");

	cfile_reload(&px, &c, "max-conns-per-client 5\n");
	hold_12x8(&px, fds, 4, 0xb00, "after a SIGHUP added max-conns-per-client 5");
	expect_sessions(&px, 12 * 5, "12 x 5 served");
	metrics_wait(c.sport, KEY_CONNS, 12 * 3, 2000, NULL);
	close_held(fds);
	finish(&b, &px, "after the limit added by SIGHUP");
}

/* Runs n sessions one after the other from src (a round trip each, then closed) and returns
 * how many times one went to the same upstream of the two as the one before. On a roundrobin
 * pool of two, one worker alternates strictly (0 repeats); with the worker picked at random per
 * connection, each worker with its own turn, n sessions show no repeat with odds of 2^-(n/2)
 * (computed exactly over the states of the two turns and the last upstream): 2^-24 for 48. */
static int rr_repeats(const struct proxy *px, struct backend *const bk[2], const char *src,
		      int n, uint64_t seed, const char *what)
{
	int prev = -1, repeats = 0;

	for (int i = 0; i < n; i++) {
		unsigned long long before[2] = { atomic_load(&bk[0]->bytes_in),
						 atomic_load(&bk[1]->bytes_in) };
		unsigned long long d[2];
		int fd = tcp_connect_from(src, px->port), which;

		expect_served(fd, seed + (uint64_t)i, what);
		close(fd);
		for (int j = 0; j < 2; j++)
			d[j] = atomic_load(&bk[j]->bytes_in) - before[j];
		cr_assert((d[0] == PING && d[1] == 0) || (d[0] == 0 && d[1] == PING),
			  "%s: session %d: the upstreams received %llu and %llu bytes, want %d on "
			  "one", what, i, d[0], d[1], PING);
		which = d[0] ? 0 : 1;
		repeats += which == prev;
		prev = which;
	}
	return repeats;
}

/* SIGHUP removes the only per-client limit: steering is detached, and the kernel spreads one
 * address's connections over the workers again (seen through each worker's own roundrobin). */
Test(climit, sighup_removes_limit_unsteered, .timeout = 60, .fini = conf_dir_remove)
{
	static struct cfile c;
	struct backend a, b;
	struct backend *const bk[2] = { &a, &b };
	struct proxy px;
	int r;

	backend_bind(&a, AF_INET);
	backend_bind(&b, AF_INET);
	backend_run(&a, BK_ECHO);
	backend_run(&b, BK_ECHO);
	cfile_start(&px, &c, bk, 2, "max-conns-per-client 100\n");
	r = rr_repeats(&px, bk, "127.0.3.2", 48, 0xc00, "steered (limit set at start)");
	cr_assert_eq(r, 0, "with a per-client limit on 2 workers, one address's 48 sessions "
		     "repeated an upstream %d times: not all on one worker's roundrobin", r);

	cfile_reload(&px, &c, "");
	r = rr_repeats(&px, bk, "127.0.3.2", 48, 0xd00, "after the SIGHUP removed the limit");
	cr_log_info("after the limit was removed: %d repeats in 48 sessions", r);
	cr_assert_gt(r, 0, "the SIGHUP removed the per-client limit, yet one address's 48 "
		     "sessions still alternate strictly: still steered to one worker");
	expect_sessions(&px, 0, "after the sessions");
	finish(&a, &px, "after the limit removed by SIGHUP");
	backend_stop(&b);
}
