/* Receive bundles (IORING_RECVSEND_BUNDLE, 6.10): the data promise with them on (the default
 * where the kernel has them) and off (UPROXY_RECV_BUNDLE=0): 64 MiB both ways, half-close in
 * both directions and 1,000 concurrent connections, every byte checked, fds back to baseline.
 * Each test proves its mode from the proxy's own debug line (recv_bundle=1 or 0). */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG	 (64 * MIB)
#define BUF_SIZE 16384 /* --buffer-size, given explicitly: the CQE floor below depends on it */
/* Buffers for the 1,000 connections: the client sends 16 KiB at a time (multi_echo), so with
 * 16 KiB buffers a receive rarely finds more than one buffer's worth and bundles of one are
 * all that form. 4 KiB buffers make each 16 KiB arrival a bundle of up to 4; 8192 of them keep
 * the pool at the default 32 MiB. */
#define SMALL_BUF_SIZE "4096"
#define SMALL_BUFFERS  "8192"
#define HALF	 (4 * MIB)

/* Starts the proxy (one worker, debug log, 16 KiB buffers unless small) in the given mode:
 * bundles on is the default, so UPROXY_RECV_BUNDLE is removed from the environment proc_spawn
 * passes on; off sets it to 0. The environment is restored before returning. */
static void start_mode(struct backend *b, struct proxy *px, bool bundles, bool small)
{
	struct proxy_cfg cfg = { 0 };
	char *err, want[32], other[32];

	if (bundles)
		unsetenv("UPROXY_RECV_BUNDLE");
	else
		setenv("UPROXY_RECV_BUNDLE", "0", 1);
	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	cfg.extra[0] = "--workers";
	cfg.extra[1] = "1";
	cfg.extra[2] = "--log-level";
	cfg.extra[3] = "debug";
	cfg.extra[4] = "--buffer-size";
	cfg.extra[5] = small ? SMALL_BUF_SIZE : "16384";
	cfg.extra[6] = small ? "--buffers" : NULL;
	cfg.extra[7] = small ? SMALL_BUFFERS : NULL;
	proxy_start(px, &cfg);
	unsetenv("UPROXY_RECV_BUNDLE");

	/* This machine runs 6.18: the kernel has bundles, so on means on. */
	snprintf(want, sizeof(want), "recv_bundle=%d", bundles);
	snprintf(other, sizeof(other), "recv_bundle=%d", !bundles);
	err = proxy_stderr(px);
	/* The backend's own line: bundles exist on both (epoll: one readv over consecutive ring
	 * entries), and so does the CQE floor below. */
	cr_assert(strstr(err, strcmp(test_backend(), "epoll") == 0 ? "worker 0: epoll fds="
								   : "worker 0: ring sq=") != NULL &&
			  strstr(err, want) != NULL &&
			  strstr(err, other) == NULL,
		  "bundles %s: want the debug line to say %s:\n%s", bundles ? "on" : "off", want,
		  err);
	free(err);
}

/* Sum of " cqes=N" over the proxy's exit summaries (one per worker). */
static uint64_t summary_cqes(struct proxy *px)
{
	char *err = proxy_stderr(px);
	uint64_t sum = 0;
	int lines = 0;

	for (char *p = err; (p = strstr(p, " cqes=")) != NULL; p++, lines++)
		sum += strtoull(p + strlen(" cqes="), NULL, 10);
	cr_assert_gt(lines, 0, "no cqes= in the proxy's exit summary:\n%s", err);
	free(err);
	return sum;
}

static int connect_or_fail(const struct proxy *px)
{
	int fd = tcp_connect(AF_INET, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy on port %u: %s", px->port, strerror(errno));
	return fd;
}

/* ---- 64 MiB both ways at once through an echo upstream ---- */

/* Without bundles each receive completion carries at most one 16 KiB buffer, so 64 MiB each
 * way takes at least 2 x 64 MiB / 16 KiB = 8192 CQEs: the floor the off mode must meet (else
 * it did not turn bundles off). With bundles a completion takes everything queued on the
 * socket (loopback segments are up to 64 KiB, the harness writes 64 KiB at a time): measured
 * 650 CQEs for 64 MiB one way and 1,280-1,430 for this echo on 6.18 (off: 9,590-9,690), so
 * on must stay under the floor (a 5x margin), or its completions were not bundles. */
#define ECHO_CQE_FLOOR (2 * BIG / BUF_SIZE)

static void echo_64mib(bool bundles, uint64_t seed)
{
	struct backend b;
	struct proxy px;
	struct xfer x;
	uint64_t cqes;
	int fd;

	start_mode(&b, &px, bundles, false);
	backend_run(&b, BK_ECHO);
	fd = connect_or_fail(&px);
	/* 64 MiB echoed in 0.1-1 s here (integrity/echo_64mib_both_ways); 30 s leaves room for
	 * a loaded machine. */
	xfer_run(&x, fd, seed, BIG, true, seed, 30000);
	cr_assert_eq(x.send_end, IO_DONE, "client sent %llu of %llu bytes, then: %s",
		     (unsigned long long)x.sent, (unsigned long long)BIG, io_end_name(x.send_end));
	cr_assert_eq(x.rx.bad_at, -1, "first corrupted byte at offset %lld",
		     (long long)x.rx.bad_at);
	cr_assert_eq(x.rx.len, BIG, "echo: %llu of %llu bytes, then %s after %llu ms",
		     (unsigned long long)x.rx.len, (unsigned long long)BIG, io_end_name(x.recv_end),
		     (unsigned long long)x.ms);
	cr_assert_eq(x.rx.hash, stream_hash(seed, BIG), "echo checksum differs");
	cr_assert_eq(x.recv_end, IO_EOF, "after the echo the client saw %s, want EOF",
		     io_end_name(x.recv_end));
	close(fd);
	assert_proxy_idle(&px, 1000, "after 64 MiB both ways");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	cqes = summary_cqes(&px);
	cr_log_info("bundles %s: 64 MiB echoed in %llu ms, %" PRIu64 " CQEs (no-bundle floor %llu)",
		    bundles ? "on" : "off", (unsigned long long)x.ms, cqes,
		    (unsigned long long)ECHO_CQE_FLOOR);
	if (bundles)
		cr_assert_lt(cqes, ECHO_CQE_FLOOR, "bundles on: %" PRIu64 " CQEs for 2 x 64 MiB, "
			     "not under the one-buffer-per-receive floor %llu: no bundles formed",
			     cqes, (unsigned long long)ECHO_CQE_FLOOR);
	else
		cr_assert_geq(cqes, ECHO_CQE_FLOOR, "bundles off: %" PRIu64 " CQEs for 2 x 64 MiB, "
			      "under the one-buffer-per-receive floor %llu: a receive carried more "
			      "than one buffer", cqes, (unsigned long long)ECHO_CQE_FLOOR);
}

Test(bundles, on_echo_64mib_both_ways, .timeout = 45) /* serial */
{
	echo_64mib(true, 0xb0e1);
}

Test(bundles, off_echo_64mib_both_ways, .timeout = 45) /* serial */
{
	echo_64mib(false, 0xb0e2);
}

/* ---- half-close, both directions, on one proxy ---- */

struct half {
	uint64_t seed_in, seed_out; /* what the upstream receives / sends */
	struct stream_check got;
	enum io_end rd_end, wr_end;
	uint64_t wrote;
	atomic_bool done;
};

/* One per connection, in order: (a) client shuts first, (b) upstream shuts first. */
static struct half halves[2];
static atomic_int nconn;

/* (a) reads the client's 4 MiB to EOF, then replies 4 MiB and closes; (b) sends 4 MiB and
 * shuts down first, then reads the client's 4 MiB to EOF. */
static void upstream_half(int fd, void *arg)
{
	int i = atomic_fetch_add(&nconn, 1);
	struct half *h = &halves[i < 2 ? i : 1];

	(void)arg;
	check_init(&h->got, h->seed_in);
	if (i == 0) {
		h->rd_end = io_read_stream(fd, &h->got, UINT64_MAX, 15000);
		h->wr_end = IO_ERROR;
		if (h->rd_end == IO_EOF)
			h->wr_end = io_write_stream(fd, h->seed_out, 0, HALF, 15000, &h->wrote);
	} else {
		h->wr_end = io_write_stream(fd, h->seed_out, 0, HALF, 15000, &h->wrote);
		shutdown(fd, SHUT_WR);
		h->rd_end = io_read_stream(fd, &h->got, UINT64_MAX, 15000);
	}
	close(fd);
	atomic_store(&h->done, true);
}

static bool wait_done(struct half *h, int timeout_ms)
{
	for (int i = 0; i < timeout_ms / 5 && !atomic_load(&h->done); i++)
		sleep_ms(5);
	return atomic_load(&h->done);
}

static void assert_upstream_got(struct half *h, const char *what)
{
	cr_assert(wait_done(h, 15000), "%s: upstream handler did not finish in 15 s", what);
	cr_assert_eq(h->got.bad_at, -1, "%s: upstream got corrupt data at %lld", what,
		     (long long)h->got.bad_at);
	cr_assert_eq(h->got.len, HALF, "%s: upstream got %llu of %llu bytes, then %s", what,
		     (unsigned long long)h->got.len, (unsigned long long)HALF,
		     io_end_name(h->rd_end));
	cr_assert_eq(h->got.hash, stream_hash(h->seed_in, HALF), "%s: upstream checksum differs",
		     what);
	cr_assert_eq(h->rd_end, IO_EOF, "%s: upstream saw %s, want EOF", what,
		     io_end_name(h->rd_end));
	cr_assert_eq(h->wr_end, IO_DONE, "%s: upstream sent %llu of %llu bytes, then %s", what,
		     (unsigned long long)h->wrote, (unsigned long long)HALF,
		     io_end_name(h->wr_end));
}

static void assert_client_got(const struct stream_check *c, enum io_end e, uint64_t seed,
			      const char *what)
{
	cr_assert_eq(c->bad_at, -1, "%s: client got corrupt data at %lld", what,
		     (long long)c->bad_at);
	cr_assert_eq(c->len, HALF, "%s: client got %llu of %llu bytes, then %s", what,
		     (unsigned long long)c->len, (unsigned long long)HALF, io_end_name(e));
	cr_assert_eq(c->hash, stream_hash(seed, HALF), "%s: client checksum differs", what);
	cr_assert_eq(e, IO_EOF, "%s: client saw %s, want EOF", what, io_end_name(e));
}

static void halfclose(bool bundles, uint64_t seed)
{
	struct backend b;
	struct proxy px;
	struct stream_check c;
	uint64_t sent = 0;
	enum io_end e;
	int fd;

	for (int i = 0; i < 2; i++) {
		memset(&halves[i], 0, sizeof(halves[i]));
		halves[i].seed_in = seed + 2 * (uint64_t)i;
		halves[i].seed_out = seed + 2 * (uint64_t)i + 1;
	}
	atomic_store(&nconn, 0);
	start_mode(&b, &px, bundles, false);
	b.handler = upstream_half;
	backend_run(&b, BK_HANDLER);

	/* (a) the client sends 4 MiB and FIN; the 4 MiB reply still reaches it, then EOF. */
	fd = connect_or_fail(&px);
	e = io_write_stream(fd, halves[0].seed_in, 0, HALF, 15000, &sent);
	cr_assert_eq(e, IO_DONE, "client-first: client sent %llu bytes, then %s",
		     (unsigned long long)sent, io_end_name(e));
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	check_init(&c, halves[0].seed_out);
	e = io_read_stream(fd, &c, UINT64_MAX, 15000);
	assert_upstream_got(&halves[0], "client-first");
	assert_client_got(&c, e, halves[0].seed_out, "client-first");
	close(fd);
	assert_proxy_idle(&px, 1000, "after the client-first half-close");

	/* (b) the upstream sends 4 MiB and FIN; the client's 4 MiB still reaches it, then EOF. */
	fd = connect_or_fail(&px);
	check_init(&c, halves[1].seed_out);
	e = io_read_stream(fd, &c, UINT64_MAX, 15000);
	assert_client_got(&c, e, halves[1].seed_out, "upstream-first");
	e = io_write_stream(fd, halves[1].seed_in, 0, HALF, 15000, &sent);
	cr_assert_eq(e, IO_DONE, "upstream-first: client sent %llu bytes after EOF, then %s",
		     (unsigned long long)sent, io_end_name(e));
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	assert_upstream_got(&halves[1], "upstream-first");
	close(fd);
	assert_proxy_idle(&px, 1000, "after the upstream-first half-close");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(bundles, on_halfclose_both_ways, .timeout = 45) /* serial */
{
	halfclose(true, 0xb0a0);
}

Test(bundles, off_halfclose_both_ways, .timeout = 45) /* serial */
{
	halfclose(false, 0xb0b0);
}

/* ---- 1,000 concurrent connections ---- */

/* Without bundles: 2 directions x 1000 x 64 KiB in 4 KiB buffers, one per receive completion
 * at most (measured 55,000-62,000 CQEs in all). */
#define CONC_CQE_FLOOR (2ULL * 1000 * 64 * KIB / 4096)

static void concurrent_1000(bool bundles, uint64_t seed)
{
	struct backend b;
	struct proxy px;
	struct multi_stats st;
	uint64_t cqes;

	raise_nofile();
	start_mode(&b, &px, bundles, true);
	backend_run(&b, BK_ECHO);
	/* 1 KiB round trip first (all 1,000 open at once), then 64 KiB each way with checksums.
	 * limits/concurrent_1000 takes 1-3 s here; 30 s is 10x. */
	multi_echo(&st, 1000, AF_INET, px.port, 64 * KIB, 1 * KIB, seed, 30000);
	cr_log_info("bundles %s: 1000 x 64 KiB echoed in %llu ms", bundles ? "on" : "off",
		    (unsigned long long)st.ms);
	cr_assert_eq(st.warm_ok, 1000, "only %d sessions completed their first round trip while "
		     "all were open; %s", st.warm_ok, st.first_problem);
	cr_assert_eq(st.ok, 1000, "%d of 1000 sessions intact (connect failed %d, corrupt %d, "
		     "early EOF %d, reset %d, timeout %d); %s", st.ok, st.connect_failed,
		     st.corrupt, st.short_eof, st.reset, st.timeout, st.first_problem);
	cr_assert_geq(atomic_load(&b.peak_open), 1000, "the upstream saw at most %d connections "
		      "open at once, want 1000", atomic_load(&b.peak_open));
	assert_proxy_idle(&px, 3000, "after 1000 concurrent sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	cqes = summary_cqes(&px);
	cr_log_info("bundles %s: %" PRIu64 " CQEs (no-bundle floor %llu)", bundles ? "on" : "off",
		    cqes, (unsigned long long)CONC_CQE_FLOOR);
	/* Only the off floor is asserted: on measured 24,000-30,000, too near it to prove more
	 * than the corrupt-data check above already does. */
	if (!bundles)
		cr_assert_geq(cqes, CONC_CQE_FLOOR, "bundles off: %" PRIu64 " CQEs, under the "
			      "one-buffer-per-receive floor %llu: a receive carried more than one "
			      "buffer", cqes, (unsigned long long)CONC_CQE_FLOOR);
}

Test(bundles, on_concurrent_1000, .timeout = 45) /* serial */
{
	concurrent_1000(true, 0xb1000000);
}

Test(bundles, off_concurrent_1000, .timeout = 45) /* serial */
{
	concurrent_1000(false, 0xb2000000);
}
