/* The upstream pool through the real binary: how each --balance policy spreads
 * sessions (roundrobin, weights, leastconn, random2, hash by client address
 * and its stability when a member goes away), retries past dead upstreams,
 * all upstreams dead, the connect timeout, and passive and active health.
 *
 * Which backend served a session is read from the backends' accept counters
 * (sessions here are sequential), so these proxies are started without the
 * harness's readiness probe: it would be one more session on some backend,
 * and one more connect failure on a backend that is not listening yet. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- local helpers ------------------------------------------------------ */

static void up_arg(char *buf, size_t len, uint16_t port, unsigned int weight)
{
	if (weight)
		snprintf(buf, len, "127.0.0.1:%u,weight=%u", port, weight);
	else
		snprintf(buf, len, "127.0.0.1:%u", port);
}

/* Non-blocking connect from source address src (host order, port 0) to
 * 127.0.0.1:port, bounded by timeout_ms; -1 with errno set on failure. */
static int connect_from(uint32_t src, uint16_t port, int timeout_ms)
{
	struct sockaddr_in s = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(src) };
	struct sockaddr_in d = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), err = 0;
	socklen_t el = sizeof(err);
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(bind(fd, (struct sockaddr *)&s, sizeof(s)), 0, "bind to %s: %s",
		     inet_ntoa(s.sin_addr), strerror(errno));
	if (connect(fd, (struct sockaddr *)&d, sizeof(d)) == 0)
		return fd;
	if (errno != EINPROGRESS)
		goto fail;
	if (poll(&pfd, 1, timeout_ms) <= 0) {
		errno = ETIMEDOUT;
		goto fail;
	}
	getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
	if (err == 0)
		return fd;
	errno = err;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

/* One short session from src: connect, a 64-byte echo round trip, close.
 * false (with why) on any failure. */
static bool serve_from(uint32_t src, uint16_t port, uint64_t seed, char *why, size_t wlen)
{
	int fd = connect_from(src, port, 2000);
	bool ok;

	if (fd < 0) {
		snprintf(why, wlen, "connect: %s", strerror(errno));
		return false;
	}
	ok = echo_roundtrip(fd, seed, 64, 3000);
	if (!ok)
		snprintf(why, wlen, "64-byte echo through the proxy failed");
	close(fd);
	return ok;
}

#define LO ((uint32_t)INADDR_LOOPBACK)

static bool serve_once(uint16_t port, uint64_t seed, char *why, size_t wlen)
{
	return serve_from(LO, port, seed, why, wlen);
}

static void snap(struct backend *const bk[], int n, int *out)
{
	for (int i = 0; i < n; i++)
		out[i] = atomic_load(&bk[i]->accepted);
}

/* The backend that accepted one connection since before: its index, -1 if
 * none did, -2 if more than one connection was accepted. */
static int landed(struct backend *const bk[], int n, const int *before)
{
	int who = -1, total = 0;

	for (int i = 0; i < n; i++) {
		int d = atomic_load(&bk[i]->accepted) - before[i];

		total += d;
		if (d > 0)
			who = i;
	}
	return total == 1 ? who : total == 0 ? -1 : -2;
}

/* One short session from src; asserts it was served, returns the backend. */
static int serve_where(struct backend *const bk[], int n, uint32_t src, uint16_t port,
		       uint64_t seed, const char *what)
{
	char why[128];
	int before[16], who;

	snap(bk, n, before);
	cr_assert(serve_from(src, port, seed, why, sizeof(why)), "%s: %s", what, why);
	who = landed(bk, n, before);
	cr_assert_geq(who, 0, "%s: served, but %s", what,
		      who == -1 ? "no backend accepted a connection"
				: "more than one backend connection was accepted");
	return who;
}

static int count_in_log(struct proxy *px, const char *needle)
{
	char *err = proxy_stderr(px), *p = err;
	int n = 0;

	while ((p = strstr(p, needle))) {
		n++;
		p += strlen(needle);
	}
	free(err);
	return n;
}

static void stop_all(struct proxy *px, struct backend *const bk[], int n)
{
	cr_assert(proxy_stop(px), "proxy did not exit 0 on SIGTERM");
	for (int i = 0; i < n; i++)
		backend_stop(bk[i]);
}

/* ---- distribution ------------------------------------------------------- */

/* n backends bound, the proxy started on them with policy (and weights),
 * then every backend running echo. */
static void pool_up(struct proxy *px, struct backend *bk, int n, const char *balance,
		    const unsigned int *weights, const char *const more[])
{
	static char ups[16][48];
	const char *args[64];
	size_t k = 0;

	for (int i = 0; i < n; i++) {
		backend_bind(&bk[i], AF_INET);
		up_arg(ups[i], sizeof(ups[i]), bk[i].port, weights ? weights[i] : 0);
		args[k++] = "-u";
		args[k++] = ups[i];
	}
	if (balance) {
		args[k++] = "--balance";
		args[k++] = balance;
	}
	for (size_t i = 0; more && more[i]; i++)
		args[k++] = more[i];
	args[k] = NULL;
	proxy_spawn_listen(px, "127.0.0.1", bk[0].port, args, NULL, NULL);
	for (int i = 0; i < n; i++)
		backend_run(&bk[i], BK_ECHO);
}

/* count sequential sessions from 127.0.0.1; per-backend counts in got[] */
static void spread(struct proxy *px, struct backend *bk, int n, int count, int *got)
{
	struct backend *ptr[16];
	int total = 0;
	uint64_t t0 = now_ms();

	for (int i = 0; i < n; i++)
		ptr[i] = &bk[i];
	for (int i = 0; i < count; i++) {
		char what[64];

		snprintf(what, sizeof(what), "session %d", i);
		serve_where(ptr, n, LO, px->port, 0x9001 + (uint64_t)i, what);
		cr_assert_lt(now_ms() - t0, 20000, "only %d sessions in 20 s", i);
	}
	for (int i = 0; i < n; i++) {
		got[i] = atomic_load(&bk[i].accepted);
		total += got[i];
	}
	cr_assert_eq(total, count, "the backends accepted %d connections for %d sessions", total,
		     count);
}

Test(pool, roundrobin_even, .timeout = 30)
{
	struct backend bk[3];
	struct proxy px;
	int got[3];

	pool_up(&px, bk, 3, NULL, NULL, NULL);
	spread(&px, bk, 3, 300, got);
	cr_log_info("roundrobin: %d / %d / %d", got[0], got[1], got[2]);
	for (int i = 0; i < 3; i++)
		cr_assert(got[i] >= 95 && got[i] <= 105, "roundrobin over 3 backends, 300 sessions: "
			  "backend %d got %d (all: %d/%d/%d), want 100 ± 5", i, got[i], got[0],
			  got[1], got[2]);
	assert_proxy_idle(&px, 2000, "after 300 sessions");
	struct backend *ptr[3] = { &bk[0], &bk[1], &bk[2] };

	stop_all(&px, ptr, 3);
}

Test(pool, roundrobin_weights, .timeout = 30)
{
	static const unsigned int w[2] = { 3, 0 };
	struct backend bk[2];
	struct proxy px;
	int got[2];

	pool_up(&px, bk, 2, "roundrobin", w, NULL);
	spread(&px, bk, 2, 400, got);
	cr_log_info("weights 3:1: %d / %d", got[0], got[1]);
	cr_assert(got[0] >= 290 && got[0] <= 310 && got[1] >= 90 && got[1] <= 110,
		  "-u A,weight=3 -u B over 400 sessions: A got %d, B got %d; want 300/100 ± 10",
		  got[0], got[1]);
	struct backend *ptr[2] = { &bk[0], &bk[1] };

	stop_all(&px, ptr, 2);
}

Test(pool, leastconn, .timeout = 30)
{
	struct backend bk[2];
	struct backend *ptr[2] = { &bk[0], &bk[1] };
	struct proxy px;
	int fds[20], on[20], n_on[2] = { 0, 0 }, to_b = 0;

	pool_up(&px, bk, 2, "leastconn", NULL, NULL);
	/* 20 long-lived sessions: leastconn must alternate, 10 and 10 */
	for (int i = 0; i < 20; i++) {
		int before[2];

		snap(ptr, 2, before);
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "long session %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x1c00 + (uint64_t)i, 64, 3000),
			  "long session %d: echo failed", i);
		on[i] = landed(ptr, 2, before);
		cr_assert_geq(on[i], 0, "long session %d: no single backend accepted it", i);
		n_on[on[i]]++;
	}
	cr_assert(n_on[0] == 10 && n_on[1] == 10, "20 sessions kept open under leastconn: A has "
		  "%d, B has %d; want 10 and 10", n_on[0], n_on[1]);
	/* B's sessions end: A keeps 10, B has none */
	for (int i = 0; i < 20; i++) {
		if (on[i] == 1) {
			close(fds[i]);
			fds[i] = -1;
		}
	}
	for (int i = 0;
	     i < 200 && (tcp4_socks_to(bk[1].port, 0) > 0 || atomic_load(&bk[1].open) > 0); i++)
		sleep_ms(10);
	cr_assert_eq(tcp4_socks_to(bk[1].port, 0), 0, "2 s after B's clients closed, the proxy "
		     "still has %d connections to B", tcp4_socks_to(bk[1].port, 0));
	sleep_ms(100);
	/* 20 new short sessions: all (at least 18) to B */
	for (int i = 0; i < 20; i++) {
		char what[64];

		snprintf(what, sizeof(what), "short session %d", i);
		to_b += serve_where(ptr, 2, LO, px.port, 0x1d00 + (uint64_t)i, what) == 1;
	}
	cr_assert_geq(to_b, 18, "with 10 sessions open on A and none on B, only %d of 20 new "
		      "sessions went to B (want ≥ 18)", to_b);
	/* A's sessions are untouched */
	for (int i = 0; i < 20; i++) {
		if (fds[i] < 0)
			continue;
		cr_assert(echo_roundtrip(fds[i], 0x1e00 + (uint64_t)i, 64, 3000),
			  "long session %d on A: echo failed at the end", i);
		close(fds[i]);
	}
	assert_proxy_idle(&px, 2000, "after every session closed");
	stop_all(&px, ptr, 2);
}

Test(pool, random2_spreads, .timeout = 30)
{
	struct backend bk[3];
	struct proxy px;
	int got[3];

	pool_up(&px, bk, 3, "random2", NULL, NULL);
	spread(&px, bk, 3, 300, got);
	cr_log_info("random2: %d / %d / %d", got[0], got[1], got[2]);
	for (int i = 0; i < 3; i++)
		cr_assert_geq(got[i], 45, "random2 over 3 backends, 300 sessions: backend %d got "
			      "%d (all: %d/%d/%d), want ≥ 15%% (45)", i, got[i], got[0], got[1],
			      got[2]);
	struct backend *ptr[3] = { &bk[0], &bk[1], &bk[2] };

	stop_all(&px, ptr, 3);
}

/* 127.1.x.y, i-th distinct source address */
static uint32_t src_addr(int i)
{
	return (127u << 24) | (1u << 16) | ((uint32_t)(i / 250) << 8) | (uint32_t)(i % 250 + 1);
}

Test(pool, hash_spreads, .timeout = 30)
{
	struct backend bk[3];
	struct backend *ptr[3] = { &bk[0], &bk[1], &bk[2] };
	struct proxy px;
	int got[3] = { 0, 0, 0 };
	uint64_t t0 = now_ms();

	pool_up(&px, bk, 3, "hash", NULL, NULL);
	for (int i = 0; i < 300; i++) {
		char what[64];

		snprintf(what, sizeof(what), "session %d (from 127.1.%d.%d)", i, i / 250,
			 i % 250 + 1);
		got[serve_where(ptr, 3, src_addr(i), px.port, 0x4a00 + (uint64_t)i, what)]++;
		cr_assert_lt(now_ms() - t0, 20000, "only %d sessions in 20 s", i);
	}
	cr_log_info("hash, 300 client addresses: %d / %d / %d", got[0], got[1], got[2]);
	for (int i = 0; i < 3; i++)
		cr_assert_geq(got[i], 45, "hash over 3 backends, 300 client addresses: backend %d "
			      "got %d (all: %d/%d/%d), want ≥ 15%% (45)", i, got[i], got[0],
			      got[1], got[2]);
	stop_all(&px, ptr, 3);
}

#define NCLIENTS 49 /* 127.0.0.2 ... 127.0.0.50 */

static uint32_t client_addr(int c)
{
	return LO + 1 + (uint32_t)c;
}

Test(pool, hash_sticky, .timeout = 30)
{
	struct backend bk[3];
	struct backend *ptr[3] = { &bk[0], &bk[1], &bk[2] };
	struct proxy px;
	int home[NCLIENTS], used[3] = { 0, 0, 0 }, distinct = 0;

	pool_up(&px, bk, 3, "hash", NULL, NULL);
	for (int round = 0; round < 4; round++) {
		for (int c = 0; c < NCLIENTS; c++) {
			char what[64];
			int who;

			snprintf(what, sizeof(what), "client 127.0.0.%d, round %d", c + 2, round);
			who = serve_where(ptr, 3, client_addr(c), px.port,
					  0x5a00 + (uint64_t)(round * 100 + c), what);
			if (round == 0) {
				home[c] = who;
				used[who]++;
			} else {
				cr_assert_eq(who, home[c], "hash: client 127.0.0.%d went to backend "
					     "%d in round 0 but to backend %d in round %d", c + 2,
					     home[c], who, round);
			}
		}
	}
	for (int i = 0; i < 3; i++)
		distinct += used[i] > 0;
	cr_log_info("hash, 49 clients: %d / %d / %d", used[0], used[1], used[2]);
	cr_assert_geq(distinct, 2, "49 client addresses all hashed to one backend (%d/%d/%d)",
		      used[0], used[1], used[2]);
	stop_all(&px, ptr, 3);
}

Test(pool, hash_stable_when_one_is_gone, .timeout = 30)
{
	struct backend bk[5];
	struct backend *ptr[5] = { &bk[0], &bk[1], &bk[2], &bk[3], &bk[4] };
	struct proxy px;
	int home[NCLIENTS], moved_to[NCLIENTS] = { 0 }, used[5] = { 0 }, gone = 0, moved = 0;

	pool_up(&px, bk, 5, "hash", NULL, NULL);
	for (int c = 0; c < NCLIENTS; c++) {
		char what[64];

		snprintf(what, sizeof(what), "client 127.0.0.%d before", c + 2);
		home[c] = serve_where(ptr, 5, client_addr(c), px.port, 0x6a00 + (uint64_t)c, what);
		used[home[c]]++;
	}
	for (int i = 1; i < 5; i++)
		gone = used[i] > used[gone] ? i : gone;
	cr_log_info("hash, 49 clients over 5: %d/%d/%d/%d/%d; stopping backend %d", used[0],
		    used[1], used[2], used[3], used[4], gone);
	/* the busiest backend goes away: connections to it are refused */
	backend_stop(&bk[gone]);
	for (int round = 0; round < 3; round++) {
		for (int c = 0; c < NCLIENTS; c++) {
			char what[80];
			int who;

			snprintf(what, sizeof(what), "client 127.0.0.%d, round %d after backend "
				 "%d stopped", c + 2, round, gone);
			who = serve_where(ptr, 5, client_addr(c), px.port,
					  0x6b00 + (uint64_t)(round * 100 + c), what);
			cr_assert_neq(who, gone, "%s: served by the stopped backend?", what);
			if (home[c] != gone) {
				cr_assert_eq(who, home[c], "hash stability: client 127.0.0.%d was on "
					     "backend %d, which is still up, but after backend %d "
					     "stopped it went to backend %d", c + 2, home[c], gone,
					     who);
			} else if (round == 0) {
				moved_to[c] = who;
				moved++;
			} else {
				cr_assert_eq(who, moved_to[c], "client 127.0.0.%d (moved off the "
					     "stopped backend) went to backend %d, then %d", c + 2,
					     moved_to[c], who);
			}
		}
	}
	cr_assert_eq(moved, used[gone]);
	for (int i = 0; i < 5; i++) {
		if (i != gone)
			backend_stop(&bk[i]);
	}
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
}

/* ---- retries, dead upstreams, connect timeout ---------------------------- */

static void retry_phase(struct backend *dead, struct backend *live, const char *const more[])
{
	struct backend *ptr[1] = { live };
	struct proxy px;
	char ud[48], ul[48];
	const char *args[16] = { "-u", ud, "-u", ul, "--retries", "2" };
	size_t k = 6;
	int before[1];

	up_arg(ud, sizeof(ud), dead->port, 0);
	up_arg(ul, sizeof(ul), live->port, 0);
	for (size_t i = 0; more && more[i]; i++)
		args[k++] = more[i];
	args[k] = NULL;
	proxy_spawn_listen(&px, "127.0.0.1", live->port, args, NULL, NULL);
	snap(ptr, 1, before);
	for (int i = 0; i < 50; i++) {
		char why[128];
		uint64_t t0 = now_ms();

		cr_assert(serve_once(px.port, 0x7a00 + (uint64_t)i, why, sizeof(why)),
			  "-u DEAD -u LIVE --retries 2%s%s: session %d not served: %s",
			  more ? " " : "", more ? more[0] : "", i, why);
		cr_assert_lt(now_ms() - t0, 1000, "session %d took %llu ms", i,
			     (unsigned long long)(now_ms() - t0));
	}
	cr_assert_eq(atomic_load(&live->accepted) - before[0], 50,
		     "LIVE accepted %d connections for 50 sessions",
		     atomic_load(&live->accepted) - before[0]);
	assert_proxy_idle(&px, 2000, "after 50 sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
}

Test(pool, retry_past_dead_upstream, .timeout = 30)
{
	static const char *const keep_trying[] = { "--fail-threshold", "1000", NULL };
	struct backend dead, live;

	backend_bind(&dead, AF_INET); /* bound, never listening: refused */
	backend_bind(&live, AF_INET);
	backend_run(&live, BK_ECHO);
	/* DEAD first in the list, and marked down after 3 failures (default) */
	retry_phase(&dead, &live, NULL);
	/* DEAD never marked down: every other session tries it first */
	retry_phase(&dead, &live, keep_trying);
	backend_stop(&live);
	backend_stop(&dead);
}

Test(pool, all_upstreams_dead, .timeout = 30)
{
	struct backend d1, d2;
	struct proxy px;
	char u1[48], u2[48];
	const char *args[] = { "-u", u1, "-u", u2, NULL };
	uint8_t hello[100];

	backend_bind(&d1, AF_INET);
	backend_bind(&d2, AF_INET);
	up_arg(u1, sizeof(u1), d1.port, 0);
	up_arg(u2, sizeof(u2), d2.port, 0);
	proxy_spawn_listen(&px, "127.0.0.1", d1.port, args, NULL, NULL);
	fill_random(hello, sizeof(hello), 0xdead, 0);
	for (int i = 0; i < 10; i++) {
		int fd = tcp_connect(AF_INET, px.port, 2000);
		uint64_t t0 = now_ms(), extra = 0, ms;
		enum io_end e;

		cr_assert_geq(fd, 0, "client %d: connect to the proxy: %s", i, strerror(errno));
		io_write_all(fd, hello, sizeof(hello), 1000, NULL); /* may fail: fine */
		e = io_wait_close(fd, 3000, &extra);
		ms = now_ms() - t0;
		cr_assert(e == IO_EOF || e == IO_RESET, "every upstream refused, client %d saw %s, "
			  "want EOF or reset", i, io_end_name(e));
		cr_assert_leq(ms, 1000, "every upstream refused: client %d closed after %llu ms, "
			      "want ≤ 1000 ms", i, (unsigned long long)ms);
		cr_assert_eq(extra, 0, "client %d got %llu bytes from nowhere", i,
			     (unsigned long long)extra);
		close(fd);
	}
	assert_proxy_idle(&px, 1000, "after 10 clients with every upstream dead");
	/* one upstream comes up: the proxy serves again */
	backend_run(&d1, BK_ECHO);
	for (int i = 0; i < 10; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0x8a00 + (uint64_t)i, why, sizeof(why)),
			  "after an upstream came back, session %d: %s", i, why);
	}
	cr_assert_eq(atomic_load(&d1.accepted), 10);
	assert_proxy_idle(&px, 2000, "after the upstream came back");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&d1);
	backend_stop(&d2);
}

Test(pool, connect_timeout_closes_client, .timeout = 30)
{
	struct blackhole h;
	struct backend spare;
	struct proxy px;
	char ub[48];
	const char *args[] = { "-u", ub, "--connect-timeout", "300", "--retries", "0", NULL };

	blackhole_open(&h);
	up_arg(ub, sizeof(ub), h.port, 0);
	/* the idle check watches the proxy's fds and its listening port; the
	 * black hole's port has our own queue fillers on it, counted below */
	backend_bind(&spare, AF_INET);
	proxy_spawn_listen(&px, "127.0.0.1", spare.port, args, NULL, NULL);
	for (int i = 0; i < 3; i++) {
		int fd = tcp_connect(AF_INET, px.port, 2000);
		uint64_t t0 = now_ms(), extra = 0, ms;
		enum io_end e;

		cr_assert_geq(fd, 0, "client %d: connect to the proxy: %s", i, strerror(errno));
		e = io_wait_close(fd, 5000, &extra);
		ms = now_ms() - t0;
		cr_assert(e == IO_EOF || e == IO_RESET, "upstream never answers, --connect-timeout "
			  "300 --retries 0: client %d saw %s after %llu ms, want EOF or reset", i,
			  io_end_name(e), (unsigned long long)ms);
		cr_assert(ms >= 280 && ms <= 1500, "--connect-timeout 300 --retries 0: client %d "
			  "closed after %llu ms, want 300-1500 ms", i, (unsigned long long)ms);
		cr_assert_eq(extra, 0);
		close(fd);
	}
	assert_proxy_idle(&px, 2000, "after the connect timeouts");
	/* a read of a busy /proc/net/tcp can miss rows, never add any: the most of a few */
	int most = 0;

	for (int i = 0; i < 5; i++) {
		int n = tcp4_socks_to(h.port, 0);

		most = n > most ? n : most;
	}
	cr_assert_eq(most, 4, "%d sockets connect to the black hole, want only our 4 queue "
		     "fillers (the proxy's timed-out connects must be closed)", most);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	blackhole_close(&h);
	backend_stop(&spare);
}

Test(pool, connect_timeout_retries_next, .timeout = 30)
{
	struct blackhole h;
	struct backend live;
	struct proxy px;
	char ub[48], ul[48];
	const char *args[] = { "-u", ub, "-u", ul, "--connect-timeout", "300", "--retries", "1",
			       NULL };
	uint64_t slowest = 0;

	blackhole_open(&h);
	backend_bind(&live, AF_INET);
	up_arg(ub, sizeof(ub), h.port, 0);
	up_arg(ul, sizeof(ul), live.port, 0);
	proxy_spawn_listen(&px, "127.0.0.1", live.port, args, NULL, NULL);
	backend_run(&live, BK_ECHO);
	for (int i = 0; i < 4; i++) {
		char why[128];
		uint64_t t0 = now_ms(), ms;

		cr_assert(serve_once(px.port, 0x9a00 + (uint64_t)i, why, sizeof(why)),
			  "-u BLACKHOLE -u LIVE --connect-timeout 300 --retries 1: session %d: %s",
			  i, why);
		ms = now_ms() - t0;
		cr_assert_leq(ms, 1500, "session %d served after %llu ms, want ≤ 1500 ms", i,
			      (unsigned long long)ms);
		slowest = ms > slowest ? ms : slowest;
	}
	/* the first one went to the black hole first (it is first in the list) */
	cr_assert_geq(slowest, 280, "no session waited for the connect timeout (slowest %llu ms): "
		      "the black hole was never tried", (unsigned long long)slowest);
	cr_assert_eq(atomic_load(&live.accepted), 4);
	assert_proxy_idle(&px, 2000, "after the sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&live);
	blackhole_close(&h);
}

/* ---- health --------------------------------------------------------------- */

/* DEAD refuses (nothing listens), so its connect attempts cannot be counted
 * on its side: --log-level debug logs each failed one ("connect to ... failed"),
 * beside the warning when it goes down and comes back ("is down", "is up"). */
Test(pool, passive_health, .timeout = 30)
{
	struct backend dead, live;
	struct proxy px;
	char ud[48], ul[48], down[96], up[96], failed[96];
	const char *args[] = { "-u", ud, "-u", ul, "--fail-threshold", "2", "--fail-timeout", "2",
			       "--retries", "1", "--log-level", "debug", NULL };
	uint64_t t_start, t_run;
	int fails, n2 = 0;

	backend_bind(&dead, AF_INET); /* refused until backend_run */
	backend_bind(&live, AF_INET);
	up_arg(ud, sizeof(ud), dead.port, 0);
	up_arg(ul, sizeof(ul), live.port, 0);
	snprintf(down, sizeof(down), "upstream 127.0.0.1:%u is down", dead.port);
	snprintf(up, sizeof(up), "upstream 127.0.0.1:%u is up", dead.port);
	snprintf(failed, sizeof(failed), "connect to 127.0.0.1:%u failed", dead.port);
	proxy_spawn_listen(&px, "127.0.0.1", live.port, args, NULL, NULL);
	backend_run(&live, BK_ECHO);

	/* phase 1: DEAD fails twice (it is tried first, then every other time) */
	t_start = now_ms();
	for (int i = 0; i < 6; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0xa100 + (uint64_t)i, why, sizeof(why)),
			  "phase 1 session %d: %s", i, why);
	}
	cr_assert_geq(proxy_wait_log(&px, down, 0, 500), 0, "after 6 sessions (DEAD refused "
		      "twice with --fail-threshold 2) the log has no '%s'", down);
	fails = count_in_log(&px, failed);
	cr_assert_eq(fails, 2, "in 6 sessions the proxy tried DEAD %d times, want 2 (then down)",
		     fails);
	/* phase 2: while down (fail-timeout 2 s from at least t_start), DEAD is skipped */
	while (now_ms() < t_start + 1500) {
		char why[128];
		uint64_t t0 = now_ms();

		cr_assert(serve_once(px.port, 0xa200 + (uint64_t)n2, why, sizeof(why)),
			  "phase 2 session %d: %s", n2, why);
		cr_assert_lt(now_ms() - t0, 1000, "phase 2 session %d took %llu ms", n2,
			     (unsigned long long)(now_ms() - t0));
		n2++;
		sleep_ms(20);
	}
	cr_assert_geq(n2, 3, "only %d sessions while DEAD was down", n2);
	fails = count_in_log(&px, failed);
	cr_assert_eq(fails, 2, "DEAD is down, yet %d more connects to it were tried in %d "
		     "sessions", fails - 2, n2);
	/* phase 3: DEAD comes alive; once its fail-timeout is over it gets traffic */
	backend_run(&dead, BK_ECHO);
	t_run = now_ms();
	for (int i = 0; atomic_load(&dead.accepted) == 0 && now_ms() < t_run + 3000; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0xa300 + (uint64_t)i, why, sizeof(why)),
			  "phase 3 session %d: %s", i, why);
		sleep_ms(50);
	}
	cr_assert_gt(atomic_load(&dead.accepted), 0, "DEAD came alive %llu ms after it was "
		     "marked down (fail-timeout 2 s), but got no session within 3 s",
		     (unsigned long long)(t_run - t_start));
	cr_log_info("DEAD got traffic again %llu ms after it came alive",
		    (unsigned long long)(now_ms() - t_run));
	cr_assert_geq(proxy_wait_log(&px, up, 0, 1000), 0,
		      "DEAD serves again, but the log has no '%s'", up);
	/* and it stays in rotation */
	int before = atomic_load(&dead.accepted);

	for (int i = 0; i < 10; i++) {
		char why[128];

		cr_assert(serve_once(px.port, 0xa400 + (uint64_t)i, why, sizeof(why)),
			  "final session %d: %s", i, why);
	}
	cr_assert_geq(atomic_load(&dead.accepted) - before, 4, "back up, DEAD got only %d of 10 "
		      "roundrobin sessions", atomic_load(&dead.accepted) - before);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&dead);
	backend_stop(&live);
}

Test(pool, active_health, .timeout = 30)
{
	struct backend a;
	struct proxy px;
	char ua[48], down[96], up[96], why[128];
	const char *args[] = { "-u", ua, "--health-interval", "200", "--log-level", "info", NULL };
	uint16_t port;
	uint64_t t0;
	long at;

	backend_bind(&a, AF_INET);
	port = a.port;
	up_arg(ua, sizeof(ua), port, 0);
	snprintf(down, sizeof(down), "health check: upstream 127.0.0.1:%u is down", port);
	snprintf(up, sizeof(up), "health check: upstream 127.0.0.1:%u is up", port);
	backend_run(&a, BK_ECHO);
	proxy_spawn_listen(&px, "127.0.0.1", port, args, NULL, NULL);
	cr_assert(serve_once(px.port, 0xb100, why, sizeof(why)), "first session: %s", why);
	sleep_ms(500);
	cr_assert_lt(proxy_wait_log(&px, down, 0, 0), 0, "the health check says a listening "
		     "upstream is down");

	/* the upstream goes away */
	backend_stop(&a);
	t0 = now_ms();
	at = proxy_wait_log(&px, down, 0, 1000);
	cr_assert_geq(at, 0, "1 s after the upstream stopped (--health-interval 200) the log has "
		      "no '%s'", down);
	cr_log_info("logged down after %llu ms", (unsigned long long)(now_ms() - t0));
	/* and comes back on the same port */
	backend_bind_on(&a, port);
	backend_run(&a, BK_ECHO);
	t0 = now_ms();
	cr_assert_geq(proxy_wait_log(&px, up, at, 1000), 0, "1 s after the upstream came back "
		      "the log has no '%s'", up);
	cr_log_info("logged up after %llu ms", (unsigned long long)(now_ms() - t0));
	cr_assert(serve_once(px.port, 0xb200, why, sizeof(why)), "session after it came back: %s",
		  why);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&a);
}
