/* Unit tests for the session state machine (src/session.c), driven through its real handlers
 * (session_start/handle/timeout/abort) against a fake loop (fake_loop.c) that records every
 * request instead of doing I/O. The session's fds are real socketpair ends so its setsockopt
 * and ioctl calls work; no byte ever goes through them. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_loop.h"
#include "uproxy/backend.h"
#include "uproxy/bufring.h"
#include "uproxy/config.h"
#include "uproxy/loop.h"
#include "uproxy/service.h"
#include "uproxy/session.h"
#include "uproxy/timer.h"

/* A small pool: 256 x 4 KiB. Above half of it free plus a multishot burst (128 + 32), so
 * directions arm multishot recvs; the ring holds 128 of them (bufring's minimum target). */
#define T_BUFFERS   256u
#define T_BUFSIZE   4096u
#define T_SLOTS	    4u
#define T_UPSTREAMS 3
#define T_IDLE_MS   1000u
#define T_IDLE2_MS  3000u /* listener 1's */
#define T_CONNECT_MS  1500u /* pool 0's connect timeout (not the 5000 default) */
#define T_CONNECT2_MS 2500u /* pool 1's */
#define T_T0	    100000u /* the clock at set-up */

static struct {
	struct loop *l;
	struct bufring bufs;
	struct timer_wheel *wheel;
	struct backend_pool *pool; /* = up[0].bp */
	struct addr baddr[2][BACKEND_MAX];
	struct config cfg;  /* global options only */
	struct svc svc[2];  /* the listeners: their cfg holds the listener options */
	struct upool up[2]; /* the pools: their cfg holds the pool options */
	struct worker_stats st;
	struct session slab[T_SLOTS];
	struct session_pre pre[T_SLOTS];
	struct addr peer[T_SLOTS];
	struct session_env e;
	int fds[16]; /* every socket made, closed at the end */
	int nfds;
	unsigned int released; /* SESSION_OUT_RELEASED outcomes seen */
	bool check;	       /* assert the in-flight invariant at each event (not in a child) */
	bool in_child;	       /* in drive_in_child's fork: a failed check exits, never asserts */
} F;

/* An assertion for the helpers a forked child also runs: criterion's own must not fire there
 * (its failure path belongs to the test process), so the child exits with 120 instead. */
#define need(cond)                                                                                 \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			if (F.in_child)                                                            \
				_exit(120);                                                        \
			cr_assert(cond, "%s", #cond);                                              \
		}                                                                                  \
	} while (0)

/* A socketpair; returns the end the session gets, stores the test's end in *peer. */
static int new_pair(int *peer)
{
	int sv[2];

	need(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	need(F.nfds + 2 < (int)(sizeof(F.fds) / sizeof(F.fds[0])));
	F.fds[F.nfds++] = sv[0];
	F.fds[F.nfds++] = sv[1];
	if (peer != NULL)
		*peer = sv[1];
	return sv[0];
}

/* Fills pool slot i: n upstreams 127.0.0.1:port0.., the parser's pool defaults but for
 * connect_ms (non-default, so a test sees whose value a connect uses). */
static void fixture_pool(unsigned int i, const char *name, int n, uint16_t port0,
			 uint32_t connect_ms)
{
	struct upool *u = &F.up[i];
	struct backend_spec specs[T_UPSTREAMS];
	struct backend_opts bo;

	backend_opts_defaults(&bo);
	cr_assert_eq(backend_pool_new(&bo, &u->bp), 0);
	memset(specs, 0, sizeof(specs));
	for (int k = 0; k < n; k++) {
		specs[k].addr.u.in4.sin_family = AF_INET;
		specs[k].addr.u.in4.sin_addr.s_addr = htonl(0x7f000001);
		specs[k].addr.u.in4.sin_port = htons((uint16_t)(port0 + k));
		specs[k].addr.len = sizeof(struct sockaddr_in);
		specs[k].weight = 1;
	}
	cr_assert_eq(backend_pool_update(u->bp, specs, n), 0);
	u->baddr = F.baddr[i];
	for (uint32_t id = 0; id < backend_slots(u->bp); id++) {
		struct backend_info bi;

		if (backend_info(u->bp, id, &bi) == 0)
			u->baddr[id] = bi.addr;
	}
	snprintf(u->cfg.name, sizeof(u->cfg.name), "%s", name);
	u->cfg.nupstreams = (uint32_t)n;
	u->cfg.balance = BALANCE_ROUNDROBIN;
	u->cfg.connect_timeout_ms = connect_ms;
	u->cfg.retries = CONFIG_DEFAULT_RETRIES;
	u->cfg.fail_threshold = BACKEND_FAIL_THRESHOLD_DEFAULT;
	u->cfg.fail_timeout_s = BACKEND_FAIL_TIMEOUT_MS_DEFAULT / 1000;
	u->used = true;
	u->refs = 1; /* its listener routes to it */
}

/* Fills listener slot i, forwarding to pool slot pool, with the parser's listener defaults
 * but for idle_ms. */
static void fixture_svc(unsigned int i, const char *name, uint16_t pool, uint32_t idle_ms)
{
	struct svc *v = &F.svc[i];

	snprintf(v->cfg.name, sizeof(v->cfg.name), "%s", name);
	v->cfg.unix_mode = CONFIG_DEFAULT_UNIX_MODE;
	v->cfg.pool = pool;
	v->cfg.idle_timeout_ms = idle_ms;
	v->cfg.fin_timeout_ms = CONFIG_DEFAULT_FIN_TIMEOUT_MS;
	v->cfg.drain_timeout_ms = CONFIG_DEFAULT_DRAIN_TIMEOUT_MS;
	v->cfg.client_table_size = CONFIG_DEFAULT_CLIENT_TABLE;
	v->cfg.client_table_fail_open = true;
	v->cfg.sni_timeout_ms = CONFIG_DEFAULT_SNI_TIMEOUT_MS;
	v->pool = pool;
	v->used = true;
}

static void setup(void)
{
	char why[128];

	memset(&F, 0, sizeof(F));
	F.check = true;
	log_set_level(LOG_ERROR);
	F.l = fake_loop_new();
	cr_assert_not_null(F.l);
	cr_assert_eq(
	    bufring_init(&F.bufs, F.l, 0, T_BUFFERS, T_BUFSIZE, 2 * T_SLOTS, why, sizeof(why)), 0,
	    "%s", why);
	cr_assert_eq(timer_wheel_new(T_T0, &F.wheel), 0);
	config_defaults(&F.cfg);
	F.cfg.buffers = T_BUFFERS;
	F.cfg.buffer_size = T_BUFSIZE;
	/* listener 0 "web" -> pool 0 "web" (3 upstreams); listener 1 "api" -> pool 1 "api" (1
	 * upstream, other timeouts): every test but the two-listener one uses only slot 0 */
	fixture_pool(0, "web", T_UPSTREAMS, 9001, T_CONNECT_MS);
	fixture_pool(1, "api", 1, 9101, T_CONNECT2_MS);
	fixture_svc(0, "web", 0, T_IDLE_MS);
	fixture_svc(1, "api", 1, T_IDLE2_MS);
	F.pool = F.up[0].bp;
	for (uint32_t i = 0; i < T_SLOTS; i++)
		F.slab[i].fd[0] = F.slab[i].fd[1] = -1;
	F.e = (struct session_env){
	    .loop = F.l,
	    .bufs = &F.bufs,
	    .wheel = F.wheel,
	    .svcs = F.svc,
	    .pools = F.up,
	    .cfg = &F.cfg,
	    .st = &F.st,
	    .slab = F.slab,
	    .peer_addrs = F.peer, /* the worker always allocates both per slot */
	    .pre = F.pre,
	    .now_ms = T_T0,
	    .high_water = SESSION_HIGH_WATER,
	};
}

static void teardown_fx(void)
{
	for (int i = 0; i < F.nfds; i++)
		close(F.fds[i]);
	backend_pool_free(F.up[0].bp);
	backend_pool_free(F.up[1].bp);
	timer_wheel_free(F.wheel);
	bufring_destroy(&F.bufs);
	fake_loop_free(F.l);
}

TestSuite(session, .init = setup, .fini = teardown_fx);

static uint32_t slot_of(const struct session *s)
{
	return session_slot(&F.e, s);
}

static uint64_t tag_of(const struct session *s, unsigned int side, enum loop_op op)
{
	return tag_make(slot_of(s), s->gen, side, op);
}

/* One loop iteration's worth: the completion to its session, then the ring top-up the worker
 * does before each wait. Checks that the session counts exactly the requests the fake loop
 * holds for it, and that a release leaves nothing in flight. */
static unsigned int handle(struct session *s, struct loop_cqe c)
{
	uint32_t slot = slot_of(s), gen = s->gen;
	unsigned int out = session_handle(&F.e, s, &c);

	bufring_commit(&F.bufs, F.e.now_ms);
	if (out & SESSION_OUT_RELEASED)
		F.released++;
	if (!F.check)
		return out;
	if (out & SESSION_OUT_RELEASED) {
		cr_assert_eq(s->state, SS_FREE);
		cr_assert_eq(s->inflight, 0);
		cr_assert_eq(fake_pending_for(F.l, slot, gen), 0, "released with requests pending");
	} else {
		cr_assert_eq(s->inflight, fake_pending_for(F.l, slot, gen),
			     "session counts %u in flight, the loop holds %zu", s->inflight,
			     fake_pending_for(F.l, slot, gen));
	}
	return out;
}

static unsigned int complete(struct session *s, struct fake_req *r, int32_t res, uint16_t flags)
{
	need(r != NULL);
	return handle(s, fake_complete(F.l, r, res, flags));
}

static unsigned int deliver(struct session *s, struct fake_req *r, const void *b, size_t n)
{
	need(r != NULL);
	return handle(s, fake_deliver(F.l, r, b, n));
}

/* The receive armed on direction d (any kind), pending, or NULL. */
static struct fake_req *recv_req(unsigned int d)
{
	static const enum fake_kind kinds[] = {FK_RECV_MULTISHOT, FK_RECV, FK_RECV_BUNDLE,
					       FK_RECV_BUF};

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		struct fake_req *r = fake_find(F.l, kinds[i], OP_RECV, (int)d, true);

		if (r != NULL)
			return r;
	}
	return NULL;
}

/* The pending send (plain or gathered) of direction d, or NULL. */
static struct fake_req *send_req(unsigned int d)
{
	struct fake_req *r = fake_find(F.l, FK_SEND, OP_SEND, (int)d, true);

	return r != NULL ? r : fake_find(F.l, FK_SENDMSG, OP_SEND, (int)d, true);
}

static int linger_of(int fd, int *secs)
{
	struct linger lg;
	socklen_t len = sizeof(lg);

	cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &len), 0);
	*secs = lg.l_linger;
	return lg.l_onoff;
}

/* session_start, the socket and the connect (and its linked timeout) completing: a session
 * streaming between fds *cfd and *ufd (the session's ends). */
static void start_streaming(struct session *s, int *cfd, int *ufd)
{
	struct fake_req *r;

	*cfd = new_pair(NULL);
	*ufd = new_pair(NULL);
	session_start(&F.e, s, *cfd, 0);
	need(s->state == SS_CONNECTING);
	complete(s, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true), *ufd, 0);
	r = fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true);
	need(r != NULL);
	need(r->fd == *ufd);
	need(r->ms == T_CONNECT_MS); /* the pool's, not a default */
	complete(s, r, 0, 0);
	/* the linked timeout ends with -ECANCELED once its connect completed */
	complete(s, fake_find(F.l, FK_LINK_TIMEOUT, OP_LINK_TIMEOUT, SIDE_UPSTREAM, true),
		 -ECANCELED, 0);
	need(s->state == SS_STREAMING);
	need(recv_req(DIR_C2U) != NULL);
	need(recv_req(DIR_U2C) != NULL);
	need(recv_req(DIR_C2U)->fd == *cfd);
	need(recv_req(DIR_U2C)->fd == *ufd);
}

/* Completes every pending request of s as the kernel would after a teardown: a cancel first
 * ends its target (-ECANCELED) if still pending, then completes itself (0, or -ENOENT);
 * closes complete with 0. Fails on anything else left pending: no cancel or close was
 * issued for it, so the slot would never be released. Returns the outcomes OR-ed. */
static unsigned int settle(struct session *s)
{
	uint32_t slot = slot_of(s), gen = s->gen;
	unsigned int out = 0;

	for (size_t i = 0; i < fake_nreqs(F.l); i++) {
		struct fake_req *r = fake_req(F.l, i);

		if (!r->pending || tag_slot(r->tag) != slot || tag_gen(r->tag) != gen)
			continue;
		if (r->kind == FK_CANCEL) {
			bool found = false;

			for (size_t j = 0; j < fake_nreqs(F.l); j++) {
				struct fake_req *t = fake_req(F.l, j);

				if (t->pending && t->tag == r->target) {
					out |= complete(s, t, -ECANCELED, 0);
					found = true;
				}
			}
			out |= complete(s, r, found ? 0 : -ENOENT, 0);
		} else if (r->kind == FK_CLOSE) {
			out |= complete(s, r, 0, 0);
		}
	}
	cr_assert_eq(fake_pending_for(F.l, slot, gen), 0,
		     "requests left pending with no cancel or close for them");
	return out;
}

/* ---- 1. happy path ---- */

Test(session, happy_path_forwards_bytes_and_releases_once)
{
	struct session *s = &F.slab[1];
	static const char up_msg[] = "GET / HTTP/1.0\r\n\r\n";
	static const char down1[] = "HTTP/1.0 200 OK\r\n", down2[] = "\r\nbody";
	uint32_t pool_before;
	struct fake_req *r;
	struct backend_info bi;
	int cfd, ufd, on, secs;
	uint16_t bid;

	start_streaming(s, &cfd, &ufd);
	cr_assert_eq(recv_req(DIR_C2U)->kind, FK_RECV_MULTISHOT);
	cr_assert_eq(s->inflight, 2);
	cr_assert_eq(backend_info(F.pool, s->backend, &bi), 0);
	cr_assert_eq(bi.active, 1);
	pool_before = bufring_available(&F.bufs);
	cr_assert_eq(pool_before, T_BUFFERS);
	/* the session is the listener's and holds its pool */
	cr_assert_eq(s->svc, 0);
	cr_assert_eq(s->pool, 0);
	cr_assert_eq(F.svc[0].sessions, 1);
	cr_assert_eq(F.svc[0].st.accepted, 1);
	cr_assert_eq(F.up[0].refs, 2, "the session does not hold its pool");

	/* client -> upstream: one send of exactly those bytes, from the pool buffer itself */
	{
		struct loop_cqe c =
		    fake_deliver(F.l, recv_req(DIR_C2U), up_msg, sizeof(up_msg) - 1);

		cr_assert_eq(c.flags, LOOP_CQE_BUFFER | LOOP_CQE_MORE);
		bid = c.bid;
		handle(s, c);
	}
	r = send_req(DIR_C2U);
	cr_assert_not_null(r, "no send after data arrived");
	cr_assert_eq(r->kind, FK_SEND);
	cr_assert_eq(r->fd, ufd);
	cr_assert_eq(r->len, sizeof(up_msg) - 1);
	cr_assert_arr_eq(r->data, up_msg, sizeof(up_msg) - 1);
	cr_assert_eq(r->buf, bufring_data(&F.bufs, bid), "the send must not copy");
	cr_assert_eq(s->dir[DIR_C2U].queued, sizeof(up_msg) - 1);
	cr_assert_eq(bufring_available(&F.bufs), pool_before - 1);
	cr_assert_not_null(recv_req(DIR_C2U), "the multishot recv stays armed");
	/* send completion: the buffer goes back to the pool (and into the ring at the commit) */
	complete(s, r, (int32_t)r->len, 0);
	cr_assert_eq(s->dir[DIR_C2U].queued, 0);
	cr_assert_eq(bufring_available(&F.bufs), pool_before);
	cr_assert_eq(F.st.bytes[DIR_C2U], sizeof(up_msg) - 1);

	/* upstream -> client, two chunks while the first send is out: order kept */
	deliver(s, recv_req(DIR_U2C), down1, sizeof(down1) - 1);
	r = send_req(DIR_U2C);
	cr_assert_not_null(r);
	cr_assert_eq(r->fd, cfd);
	deliver(s, recv_req(DIR_U2C), down2, sizeof(down2) - 1);
	cr_assert_eq(send_req(DIR_U2C), r, "a second send while one is in flight");
	complete(s, r, (int32_t)r->len, 0);
	r = send_req(DIR_U2C);
	cr_assert_not_null(r);
	cr_assert_eq(r->len, sizeof(down2) - 1);
	cr_assert_arr_eq(r->data, down2, sizeof(down2) - 1);
	complete(s, r, (int32_t)r->len, 0);
	cr_assert_eq(bufring_available(&F.bufs), pool_before);

	/* EOF from the client: shutdown(SHUT_WR) to the upstream */
	complete(s, recv_req(DIR_C2U), 0, 0);
	r = fake_find(F.l, FK_SHUTDOWN, OP_SHUTDOWN, DIR_C2U, true);
	cr_assert_not_null(r);
	cr_assert_eq(r->fd, ufd);
	cr_assert_eq(r->how, SHUT_WR);
	cr_assert_null(recv_req(DIR_C2U), "re-armed a recv after EOF");
	cr_assert_eq(complete(s, r, 0, 0), SESSION_OUT_NONE);
	cr_assert_eq(s->state, SS_CLIENT_DONE);

	/* EOF from the upstream: shutdown to the client, then both closes */
	complete(s, recv_req(DIR_U2C), 0, 0);
	r = fake_find(F.l, FK_SHUTDOWN, OP_SHUTDOWN, DIR_U2C, true);
	cr_assert_not_null(r);
	cr_assert_eq(r->fd, cfd);
	cr_assert_eq(complete(s, r, 0, 0), SESSION_OUT_NONE);
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_NORMAL);
	cr_assert_eq(s->truncated, 0);
	cr_assert_not_null(fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_CLIENT, true));
	cr_assert_not_null(fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_UPSTREAM, true));
	cr_assert_eq(fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_CLIENT, true)->fd, cfd);
	cr_assert_eq(fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_UPSTREAM, true)->fd, ufd);
	/* a clean end: no RST on either side */
	on = linger_of(cfd, &secs);
	cr_assert_eq(on, 0);
	cr_assert_eq(linger_of(ufd, &secs), 0);

	cr_assert_eq(complete(s, fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_CLIENT, true), 0, 0),
		     SESSION_OUT_NONE, "released with the upstream close still in flight");
	cr_assert_eq(complete(s, fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_UPSTREAM, true), 0, 0),
		     SESSION_OUT_RELEASED);
	cr_assert_eq(F.released, 1);
	cr_assert_eq(s->state, SS_FREE);
	cr_assert_eq(s->inflight, 0);
	cr_assert_eq(fake_pending_for(F.l, slot_of(s), s->gen), 0);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS);
	cr_assert_eq(backend_info(F.pool, s->tried[0], &bi), 0);
	cr_assert_eq(bi.active, 0, "the backend still counts the session");
	cr_assert_eq(F.st.bytes[DIR_U2C], sizeof(down1) + sizeof(down2) - 2);
	/* the listener's own counters agree with the worker's */
	cr_assert_eq(F.svc[0].st.bytes[DIR_C2U], sizeof(up_msg) - 1);
	cr_assert_eq(F.svc[0].st.bytes[DIR_U2C], sizeof(down1) + sizeof(down2) - 2);
	cr_assert_eq(F.svc[0].st.truncated[SIDE_CLIENT] + F.svc[0].st.truncated[SIDE_UPSTREAM], 0);
}

/* ---- 2. short send ---- */

Test(session, short_send_resends_the_rest_first_in_order)
{
	struct session *s = &F.slab[0];
	uint8_t a[3000], b[500], want[2500];
	struct fake_req *r;
	uint16_t bid_a;
	int cfd, ufd;

	for (size_t i = 0; i < sizeof(a); i++)
		a[i] = (uint8_t)(i * 7 + 1);
	for (size_t i = 0; i < sizeof(b); i++)
		b[i] = (uint8_t)(0xa0 ^ i);
	start_streaming(s, &cfd, &ufd);
	{
		struct loop_cqe c = fake_deliver(F.l, recv_req(DIR_C2U), a, sizeof(a));

		bid_a = c.bid;
		handle(s, c);
	}
	r = send_req(DIR_C2U);
	cr_assert_eq(r->len, sizeof(a));
	/* the second chunk waits behind the send in flight */
	deliver(s, recv_req(DIR_C2U), b, sizeof(b));
	cr_assert_eq(fake_count_since(F.l, 0, FK_SEND) + fake_count_since(F.l, 0, FK_SENDMSG), 1,
		     "two sends in flight on one direction");
	cr_assert_eq(s->dir[DIR_C2U].queued, sizeof(a) + sizeof(b));

	/* 1000 of 3000 sent: the remaining 2000, then b, in one gathered send */
	complete(s, r, 1000, 0);
	r = send_req(DIR_C2U);
	cr_assert_not_null(r, "the rest was not resent");
	cr_assert_eq(r->kind, FK_SENDMSG);
	cr_assert_eq(r->niov, 2);
	cr_assert_eq(r->len, 2500);
	cr_assert_eq(r->buf, bufring_data(&F.bufs, bid_a) + 1000);
	memcpy(want, a + 1000, 2000);
	memcpy(want + 2000, b, sizeof(b));
	cr_assert_arr_eq(r->data, want, 2500);
	cr_assert_eq(s->dir[DIR_C2U].queued, 2500);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS - 2,
		     "a buffer freed before it was sent");

	/* short again, inside the first buffer: 300 of it left, then b */
	complete(s, r, 1700, 0);
	r = send_req(DIR_C2U);
	cr_assert_not_null(r);
	cr_assert_eq(r->len, 800);
	cr_assert_arr_eq(r->data, a + 2700, 300);
	cr_assert_arr_eq(r->data + 300, b, sizeof(b));

	/* exactly the first buffer's rest sent: it goes back, b alone remains */
	complete(s, r, 300, 0);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS - 1);
	r = send_req(DIR_C2U);
	cr_assert_eq(r->kind, FK_SEND);
	cr_assert_eq(r->len, sizeof(b));
	cr_assert_arr_eq(r->data, b, sizeof(b));
	complete(s, r, (int32_t)sizeof(b), 0);
	cr_assert_eq(s->dir[DIR_C2U].queued, 0);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS);
	cr_assert_null(send_req(DIR_C2U));
	cr_assert_eq(F.st.bytes[DIR_C2U], sizeof(a) + sizeof(b));
}

/* ---- 3. connect refused ---- */

static uint16_t port_of(const struct fake_req *r)
{
	return ntohs(((const struct sockaddr_in *)&r->sa)->sin_port);
}

Test(session, connect_refused_retries_next_upstream_then_closes_client)
{
	struct session *s = &F.slab[2];
	struct fake_req *r, *c1, *c2;
	int cfd, u1, u2;
	unsigned int out;

	F.up[0].cfg.retries = 1; /* two attempts in all */
	cfd = new_pair(NULL);
	u1 = new_pair(NULL);
	u2 = new_pair(NULL);
	session_start(&F.e, s, cfd, 0);
	complete(s, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true), u1, 0);
	c1 = fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true);
	cr_assert_not_null(c1);
	complete(s, c1, -ECONNREFUSED, 0);
	complete(s, fake_find(F.l, FK_LINK_TIMEOUT, OP_LINK_TIMEOUT, SIDE_UPSTREAM, true),
		 -ECANCELED, 0);
	/* the failed upstream socket is closed, and a new one asked for */
	cr_assert_eq(s->state, SS_CONNECTING);
	r = fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_UPSTREAM, false);
	cr_assert_not_null(r);
	cr_assert_eq(r->fd, u1);
	cr_assert_eq(fake_count_since(F.l, 0, FK_SOCKET), 2, "no retry");
	cr_assert_eq(s->fd[SIDE_CLIENT], cfd, "client closed while a retry was left");

	complete(s, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true), u2, 0);
	c2 = fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true);
	cr_assert_not_null(c2);
	cr_assert_eq(c2->fd, u2);
	cr_assert_neq(port_of(c2), port_of(c1), "the retry went to the same upstream");
	complete(s, c2, -ECONNREFUSED, 0);
	/* retries exhausted: the client is closed (no third attempt) */
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_CONNECT_FAILED);
	cr_assert_eq(fake_count_since(F.l, 0, FK_SOCKET), 2, "a third attempt past --retries");
	r = fake_find(F.l, FK_CLOSE, OP_CLOSE, SIDE_CLIENT, true);
	cr_assert_not_null(r, "the client was not closed");
	cr_assert_eq(r->fd, cfd);
	cr_assert_eq(F.st.connect_attempts, 2);
	cr_assert_eq(F.st.connect_errors, 2);
	cr_assert_eq(F.released, 0);
	out = complete(s, fake_find(F.l, FK_LINK_TIMEOUT, OP_LINK_TIMEOUT, SIDE_UPSTREAM, true),
		       -ECANCELED, 0);
	out |= settle(s);
	cr_assert_eq(out, SESSION_OUT_RELEASED);
	cr_assert_eq(F.released, 1);
	for (uint32_t id = 0; id < backend_slots(F.pool); id++) {
		struct backend_info bi;

		if (backend_info(F.pool, id, &bi) == 0)
			cr_assert_eq(bi.active, 0, "backend %u still held", id);
	}
}

/* ---- 4. reset on one side ---- */

Test(session, upstream_reset_resets_client_and_waits_for_every_completion)
{
	struct session *s = &F.slab[3];
	uint8_t data[100];
	struct fake_req *pend[16];
	size_t np = 0, mark;
	int cfd, ufd, secs;

	memset(data, 'x', sizeof(data));
	start_streaming(s, &cfd, &ufd);
	deliver(s, recv_req(DIR_C2U), data, sizeof(data));
	cr_assert_not_null(send_req(DIR_C2U));
	mark = fake_nreqs(F.l);
	/* the upstream resets: its recv ends with -ECONNRESET */
	complete(s, recv_req(DIR_U2C), -ECONNRESET, 0);
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_UPSTREAM_RESET);
	cr_assert_eq(linger_of(cfd, &secs), 1, "the client gets a FIN, not the upstream's RST");
	cr_assert_eq(secs, 0);
	cr_assert_eq(linger_of(ufd, &secs), 1);
	cr_assert(s->truncated & SESSION_LOST_UPSTREAM, "100 queued bytes lost, not flagged");
	/* what was in flight is cancelled: the client recv and the upstream send */
	cr_assert_eq(fake_count_since(F.l, mark, FK_CLOSE), 2);
	cr_assert_geq(fake_count_since(F.l, mark, FK_CANCEL), 2);
	for (size_t i = 0; i < fake_nreqs(F.l); i++) {
		struct fake_req *r = fake_req(F.l, i);

		if (r->pending && (r->kind == FK_RECV_MULTISHOT || r->kind == FK_SEND)) {
			bool cancelled = false;

			for (size_t j = mark; j < fake_nreqs(F.l); j++)
				cancelled |= fake_req(F.l, j)->kind == FK_CANCEL &&
					     fake_req(F.l, j)->target == r->tag;
			cr_assert(cancelled, "pending %s not cancelled", fake_kind_name(r->kind));
		}
	}

	/* adversarial order: closes, then cancels, a late multishot recv with data, and the
	 * cancelled requests last; only the very last completion releases */
	for (size_t i = 0; i < fake_nreqs(F.l); i++)
		if (fake_req(F.l, i)->pending && np < 16)
			pend[np++] = fake_req(F.l, i);
	for (size_t i = 0; i < np; i++)
		if (pend[i]->kind == FK_CLOSE)
			cr_assert_eq(complete(s, pend[i], 0, 0), 0, "released early");
	for (size_t i = 0; i < np; i++)
		if (pend[i]->kind == FK_CANCEL)
			cr_assert_eq(complete(s, pend[i], 0, 0), 0, "released early");
	{
		struct fake_req *rv = recv_req(DIR_C2U);
		struct fake_req *sd = send_req(DIR_C2U);

		cr_assert_not_null(rv);
		cr_assert_not_null(sd);
		/* the kernel posted more data before it saw the cancel: dropped, not sent */
		cr_assert_eq(deliver(s, rv, "late", 4), 0, "released early");
		cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS - 1,
			     "a buffer filled while closing is held instead of given back");
		cr_assert_eq(fake_count_since(F.l, mark, FK_SEND), 0, "sent while closing");
		cr_assert_eq(complete(s, rv, -ECANCELED, 0), 0, "released early");
		cr_assert_eq(complete(s, sd, -ECANCELED, 0), SESSION_OUT_RELEASED);
	}
	cr_assert_eq(F.released, 1);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS, "buffers not given back at release");
}

Test(session, client_reset_resets_upstream_even_with_nothing_queued)
{
	struct session *s = &F.slab[0];
	int cfd, ufd, secs;

	start_streaming(s, &cfd, &ufd);
	complete(s, recv_req(DIR_C2U), -ECONNRESET, 0);
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_CLIENT_RESET);
	cr_assert_eq(s->truncated, 0);
	cr_assert_eq(linger_of(ufd, &secs), 1, "the reset was not passed to the upstream");
	cr_assert_eq(secs, 0);
	cr_assert_eq(settle(s), SESSION_OUT_RELEASED);
	cr_assert_eq(F.released, 1);
}

/* ---- 5. idle timeout ---- */

static void on_timer(struct timer_node *n, void *ctx)
{
	(void)ctx;
	session_timeout(&F.e, &F.slab[n->data]);
}

/* Moves the clock to t and fires what is due; returns how many fired. */
static size_t advance_to(uint64_t t)
{
	F.e.now_ms = t;
	return timer_advance(F.wheel, t, on_timer, NULL);
}

Test(session, idle_timeout_with_bytes_queued_resets_both)
{
	struct session *s = &F.slab[1];
	uint8_t data[700];
	int cfd, ufd, secs;

	memset(data, 'q', sizeof(data));
	start_streaming(s, &cfd, &ufd);
	deliver(s, recv_req(DIR_U2C), data, sizeof(data)); /* at T0: the deadline is T0 + idle */
	cr_assert_not_null(send_req(DIR_U2C));
	/* the wheel fires exactly at the deadline (timer.h): not one ms before */
	cr_assert_eq(advance_to(T_T0 + T_IDLE_MS - 1), 0);
	cr_assert_eq(s->state, SS_STREAMING);
	cr_assert_eq(advance_to(T_T0 + T_IDLE_MS), 1);
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_TIMEOUT);
	cr_assert_eq(s->truncated & SESSION_LOST_CLIENT, SESSION_LOST_CLIENT,
		     "700 bytes for the client dropped without a flag");
	cr_assert_eq(F.st.truncated[SIDE_CLIENT], 1);
	cr_assert_eq(F.svc[0].st.truncated[SIDE_CLIENT], 1, "the listener did not count the loss");
	cr_assert_eq(F.svc[0].st.truncated[SIDE_UPSTREAM], 0);
	cr_assert_eq(linger_of(cfd, &secs), 1, "the client sees a FIN for a cut stream");
	cr_assert_eq(secs, 0);
	cr_assert_eq(linger_of(ufd, &secs), 1);
	cr_assert_eq(settle(s), SESSION_OUT_RELEASED);
	cr_assert_eq(bufring_available(&F.bufs), T_BUFFERS);
}

Test(session, idle_timeout_with_nothing_queued_closes_cleanly)
{
	struct session *s = &F.slab[1];
	int cfd, ufd, secs;
	size_t mark;

	start_streaming(s, &cfd, &ufd);
	/* a receive at T0 + 200, its send completing at T0 + 500: the send is progress too,
	 * and pushes the deadline to T0 + 1500 */
	cr_assert_eq(advance_to(T_T0 + 200), 0);
	deliver(s, recv_req(DIR_C2U), "ping", 4);
	cr_assert_eq(advance_to(T_T0 + 500), 0);
	complete(s, send_req(DIR_C2U), 4, 0);
	cr_assert_eq(advance_to(T_T0 + 500 + T_IDLE_MS - 1), 0, "idle fired despite progress");
	mark = fake_nreqs(F.l);
	cr_assert_eq(advance_to(T_T0 + 500 + T_IDLE_MS), 1);
	cr_assert_eq(s->state, SS_CLOSING);
	cr_assert_eq(s->reason, CLOSE_TIMEOUT);
	cr_assert_eq(s->truncated, 0);
	cr_assert_eq(linger_of(cfd, &secs), 0, "RST although nothing was lost");
	cr_assert_eq(linger_of(ufd, &secs), 0);
	/* both armed recvs cancelled, both fds closed */
	cr_assert_eq(fake_count_since(F.l, mark, FK_CANCEL), 2);
	cr_assert_eq(fake_count_since(F.l, mark, FK_CLOSE), 2);
	cr_assert_eq(settle(s), SESSION_OUT_RELEASED);
}

Test(session, idle_timeout_with_unread_input_resets)
{
	struct session *s = &F.slab[1];
	int cfd, ufd, cpeer, secs;

	cfd = new_pair(&cpeer);
	ufd = new_pair(NULL);
	/* hand-made start so the client end can hold unread bytes */
	session_start(&F.e, s, cfd, 0);
	complete(s, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true), ufd, 0);
	complete(s, fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true), 0, 0);
	complete(s, fake_find(F.l, FK_LINK_TIMEOUT, OP_LINK_TIMEOUT, SIDE_UPSTREAM, true),
		 -ECANCELED, 0);
	/* bytes the client sent that the (fake) recv never took: lost if closed now */
	cr_assert_eq(write(cpeer, "unread", 6), 6);
	cr_assert_eq(advance_to(T_T0 + T_IDLE_MS), 1);
	cr_assert_eq(s->truncated, SESSION_LOST_UPSTREAM);
	cr_assert_eq(linger_of(cfd, &secs), 1);
	cr_assert_eq(linger_of(ufd, &secs), 1);
	cr_assert_eq(settle(s), SESSION_OUT_RELEASED);
}

/* ---- 5b. two listeners: each session uses its own listener's settings, pool and counters ---- */

Test(session, second_listener_uses_its_own_pool_timeouts_and_counters)
{
	struct session *a = &F.slab[0], *b = &F.slab[2];
	struct fake_req *r;
	struct backend_info bi;
	int acfd, aufd, bcfd, bufd;

	start_streaming(a, &acfd, &aufd); /* listener 0, at T0 */
	bcfd = new_pair(NULL);
	bufd = new_pair(NULL);
	session_start(&F.e, b, bcfd, 1);
	cr_assert_eq(b->state, SS_CONNECTING);
	cr_assert_eq(b->svc, 1);
	cr_assert_eq(b->pool, 1, "listener 1's session forwards to pool 0");
	cr_assert_eq(F.up[1].refs, 2);
	cr_assert_eq(F.up[0].refs, 2, "pool 0 held by listener 0's session only");
	complete(b, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true), bufd, 0);
	r = fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true);
	cr_assert_not_null(r);
	cr_assert_eq(r->fd, bufd);
	cr_assert_eq(r->ms, T_CONNECT2_MS, "connect timeout not pool 1's");
	cr_assert_eq(ntohs(((const struct sockaddr_in *)&r->sa)->sin_port), 9101,
		     "connected outside pool 1");
	complete(b, r, 0, 0);
	complete(b, fake_find(F.l, FK_LINK_TIMEOUT, OP_LINK_TIMEOUT, SIDE_UPSTREAM, true),
		 -ECANCELED, 0);
	cr_assert_eq(b->state, SS_STREAMING);
	cr_assert_eq(backend_info(F.up[1].bp, b->backend, &bi), 0);
	cr_assert_eq(bi.active, 1);
	cr_assert_eq(backend_info(F.up[0].bp, a->backend, &bi), 0);
	cr_assert_eq(bi.active, 1);

	/* 5 bytes through b: counted on listener 1 (and the worker), not on listener 0 */
	r = NULL;
	for (size_t i = 0; i < fake_nreqs(F.l); i++) {
		struct fake_req *q = fake_req(F.l, i);

		if (q->pending && q->kind == FK_RECV_MULTISHOT && q->fd == bcfd)
			r = q;
	}
	cr_assert_not_null(r, "no recv armed on listener 1's client");
	deliver(b, r, "hello", 5);
	r = NULL;
	for (size_t i = 0; i < fake_nreqs(F.l); i++) {
		struct fake_req *q = fake_req(F.l, i);

		if (q->pending && q->kind == FK_SEND && q->fd == bufd)
			r = q;
	}
	cr_assert_not_null(r);
	cr_assert_arr_eq(r->data, "hello", 5);
	complete(b, r, 5, 0); /* at T0: b's deadline is T0 + T_IDLE2_MS */
	cr_assert_eq(F.svc[1].st.accepted, 1);
	cr_assert_eq(F.svc[0].st.accepted, 1);
	cr_assert_eq(F.svc[1].st.bytes[DIR_C2U], 5);
	cr_assert_eq(F.svc[0].st.bytes[DIR_C2U], 0);
	cr_assert_eq(F.st.bytes[DIR_C2U], 5);
	cr_assert_eq(F.svc[1].sessions, 1);
	cr_assert_eq(F.svc[0].sessions, 1);

	/* each its own idle timeout: a at T0 + 1000, b only at T0 + 3000 */
	cr_assert_eq(advance_to(T_T0 + T_IDLE_MS), 1);
	cr_assert_eq(a->state, SS_CLOSING);
	cr_assert_eq(a->reason, CLOSE_TIMEOUT);
	cr_assert_eq(b->state, SS_STREAMING, "listener 1's session took listener 0's timeout");
	cr_assert_eq(settle(a), SESSION_OUT_RELEASED);
	cr_assert_eq(advance_to(T_T0 + T_IDLE2_MS - 1), 0);
	cr_assert_eq(b->state, SS_STREAMING);
	cr_assert_eq(advance_to(T_T0 + T_IDLE2_MS), 1);
	cr_assert_eq(b->state, SS_CLOSING);
	cr_assert_eq(b->reason, CLOSE_TIMEOUT);
	cr_assert_eq(settle(b), SESSION_OUT_RELEASED);
	cr_assert_eq(F.released, 2);
	cr_assert_eq(backend_info(F.up[1].bp, b->tried[0], &bi), 0);
	cr_assert_eq(bi.active, 0, "pool 1's backend still counts the session");
}

/* ---- 6. pool empty ---- */

Test(session, enobufs_rearms_at_once_on_a_fallback_buffer)
{
	struct session *s = &F.slab[0];
	uint16_t taken[T_BUFFERS];
	uint32_t ntaken = 0;
	struct fake_req *r, *fb;
	size_t mark;
	int cfd, ufd;
	uint16_t bid;

	start_streaming(s, &cfd, &ufd);
	/* other sockets take every buffer the ring holds */
	while (fake_pbuf_take(F.l, &bid)) {
		bufring_took(&F.bufs, bid, 0);
		taken[ntaken++] = bid;
	}
	cr_assert_gt(ntaken, 0);
	r = recv_req(DIR_C2U);
	mark = fake_nreqs(F.l);
	{
		struct loop_cqe c = fake_deliver(F.l, r, "abc", 3);

		cr_assert_eq(c.res, -ENOBUFS);
		cr_assert_eq(c.flags & LOOP_CQE_MORE, 0,
			     "the fake kept a multishot through ENOBUFS");
		handle(s, c);
	}
	/* in the same event, not after a timer or a send: a plain recv into a private buffer */
	cr_assert_eq(fake_count_since(F.l, mark, FK_RECV_BUF), 1, "the direction parked");
	fb = recv_req(DIR_C2U);
	cr_assert_not_null(fb);
	cr_assert_eq(fb->kind, FK_RECV_BUF);
	cr_assert_eq(fb->fd, cfd);
	cr_assert_eq(fb->len, BUFRING_FALLBACK_SIZE);
	cr_assert(s->dir[DIR_C2U].flags & DIR_RECV_FB);
	cr_assert_eq(fb->buf, bufring_data(&F.bufs, s->dir[DIR_C2U].fb));
	cr_assert_eq(bufring_fallback_used(&F.bufs), 1);
	cr_assert_eq(F.st.buf_exhausted, 1);
	cr_assert_eq(F.st.fallback_recvs, 1);
	/* its bytes travel like any others */
	deliver(s, fb, "xyz", 3);
	r = send_req(DIR_C2U);
	cr_assert_not_null(r);
	cr_assert_eq(r->len, 3);
	cr_assert_arr_eq(r->data, "xyz", 3);
	cr_assert_eq(r->fd, ufd);
	complete(s, r, 3, 0);
	cr_assert_eq(bufring_fallback_used(&F.bufs), 0, "fallback buffer not freed after its send");
	cr_assert_not_null(recv_req(DIR_C2U), "no recv armed after the send");
	for (uint32_t i = 0; i < ntaken; i++)
		bufring_put(&F.bufs, taken[i]);
}

/* ---- 7. the transition table, derived by driving events ---- */

/* How to bring a session into each state through its handlers. */
static void drive_into(struct session *s, enum session_state st)
{
	int cfd, ufd;

	switch (st) {
	case SS_FREE:
		break;
	case SS_AWAIT_HEADER:
		F.svc[0].cfg.accept_proxy = true;
		session_start(&F.e, s, new_pair(NULL), 0);
		F.svc[0].cfg.accept_proxy = false;
		break;
	case SS_CONNECTING:
		session_start(&F.e, s, new_pair(NULL), 0);
		complete(s, fake_find(F.l, FK_SOCKET, OP_SOCKET, SIDE_UPSTREAM, true),
			 new_pair(NULL), 0);
		break;
	case SS_STREAMING:
	case SS_CLIENT_DONE:
	case SS_UPSTREAM_DONE:
	case SS_CLOSING:
		start_streaming(s, &cfd, &ufd);
		if (st == SS_CLIENT_DONE || st == SS_UPSTREAM_DONE) {
			unsigned int d = st == SS_CLIENT_DONE ? DIR_C2U : DIR_U2C;

			complete(s, recv_req(d), 0, 0);
			complete(s, fake_find(F.l, FK_SHUTDOWN, OP_SHUTDOWN, (int)d, true), 0, 0);
		}
		if (st == SS_CLOSING)
			session_abort(&F.e, s, CLOSE_SHUTDOWN);
		break;
	default:
		break;
	}
}

/* A completion that was never asked for, for an event the session's state gives no request
 * to complete. */
static void synth(struct session *s, unsigned int side, enum loop_op op, int32_t res)
{
	struct loop_cqe c = {.tag = tag_of(s, side, op), .res = res};

	handle(s, c);
}

/* Direction d's peer finished: its recv ends with 0 and the shutdown that forwards the EOF
 * completes (synthesised when the state has no such request). */
static void drive_dir_done(struct session *s, unsigned int d)
{
	struct fake_req *r = recv_req(d);

	if (r != NULL)
		complete(s, r, 0, 0);
	r = fake_find(F.l, FK_SHUTDOWN, OP_SHUTDOWN, (int)d, true);
	if (r != NULL)
		complete(s, r, 0, 0);
	else
		synth(s, d, OP_SHUTDOWN, 0);
}

/* Makes ev happen to s the way the worker and the kernel would. */
static void drive_event(struct session *s, enum session_event ev)
{
	static const char hdr[] = "PROXY TCP4 192.0.2.1 192.0.2.2 40000 443\r\n";
	struct fake_req *r;

	switch (ev) {
	case SE_START:
		session_start(&F.e, s, new_pair(NULL), 0);
		break;
	case SE_START_PROXY:
		F.svc[0].cfg.accept_proxy = true;
		session_start(&F.e, s, new_pair(NULL), 0);
		break;
	case SE_HEADER_DONE:
		r = fake_find(F.l, FK_RECV_BUF, OP_HDR_RECV, SIDE_CLIENT, true);
		if (r != NULL) {
			deliver(s, r, hdr, sizeof(hdr) - 1);
		} else {
			struct session_pre *pr = &F.pre[slot_of(s)];

			memcpy(pr->data + pr->len, hdr, sizeof(hdr) - 1);
			synth(s, SIDE_CLIENT, OP_HDR_RECV, sizeof(hdr) - 1);
		}
		break;
	case SE_CONNECTED:
		r = fake_find(F.l, FK_CONNECT_TIMEOUT, OP_CONNECT, SIDE_UPSTREAM, true);
		if (r != NULL)
			complete(s, r, 0, 0);
		else
			synth(s, SIDE_UPSTREAM, OP_CONNECT, 0);
		break;
	case SE_C2U_DONE:
		drive_dir_done(s, DIR_C2U);
		break;
	case SE_U2C_DONE:
		drive_dir_done(s, DIR_U2C);
		break;
	case SE_ABORT:
		session_abort(&F.e, s, CLOSE_SHUTDOWN);
		break;
	case SE_RELEASED:
		/* the kernel answers every cancel (ending its target), close and linked timeout
		 * pending: the session is released if, and only if, its state allows it */
		for (size_t i = 0; i < fake_nreqs(F.l); i++) {
			r = fake_req(F.l, i);
			if (!r->pending || tag_slot(r->tag) != slot_of(s))
				continue;
			if (r->kind == FK_CANCEL) {
				for (size_t j = 0; j < fake_nreqs(F.l); j++)
					if (fake_req(F.l, j)->pending &&
					    fake_req(F.l, j)->tag == r->target)
						complete(s, fake_req(F.l, j), -ECANCELED, 0);
				complete(s, r, 0, 0);
			} else if (r->kind == FK_CLOSE) {
				complete(s, r, 0, 0);
			} else if (r->kind == FK_LINK_TIMEOUT) {
				complete(s, r, -ECANCELED, 0);
			}
		}
		break;
	default:
		break;
	}
}

/* In a child (an event the table refuses may abort): the state reached after driving ev in
 * state from, as the exit status; 100 + the state if the recipe missed from. */
static int drive_in_child(enum session_state from, enum session_event ev)
{
	pid_t pid = fork();
	int status;

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct session *s = &F.slab[0];
		int devnull = open("/dev/null", O_WRONLY);

		if (devnull >= 0)
			dup2(devnull, STDERR_FILENO); /* the abort's log line */
		alarm(5); /* a child runs microseconds: 5 s means it is stuck */
		F.check = false;
		F.in_child = true;
		drive_into(s, from);
		if (s->state != from)
			_exit(100 + s->state);
		drive_event(s, ev);
		_exit(s->state);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status)) {
		cr_assert_eq(WTERMSIG(status), SIGABRT, "%s --%s--> died of signal %d",
			     session_state_name(from), session_event_name(ev), WTERMSIG(status));
		return -1; /* refused loudly */
	}
	cr_assert(WIFEXITED(status));
	cr_assert_neq(WEXITSTATUS(status), 120, "%s --%s-->: a step of the drive failed",
		      session_state_name(from), session_event_name(ev));
	return WEXITSTATUS(status);
}

Test(session, table_agrees_with_the_handlers_for_every_pair)
{
	unsigned int allowed = 0;

	for (int from = 0; from < SS__COUNT; from++) {
		for (int ev = 0; ev < SE__COUNT; ev++) {
			enum session_state want = session_transition(from, ev);
			int got = drive_in_child(from, ev);

			cr_assert_lt(got, 100, "could not drive a session into %s",
				     session_state_name(from));
			if (want == SS__COUNT) {
				/* refused: the handler aborts, or the state stays */
				cr_assert(got == -1 || got == from,
					  "%s --%s--> not in the table, yet driven to %s",
					  session_state_name(from), session_event_name(ev),
					  session_state_name(got));
			} else {
				allowed++;
				cr_assert_eq(got, (int)want,
					     "%s --%s--> table says %s, driven to %s",
					     session_state_name(from), session_event_name(ev),
					     session_state_name(want),
					     got < 0 ? "abort" : session_state_name(got));
			}
		}
	}
	/* the design, not a copy of the table: every live state can be aborted, a closing
	 * session only released, and a free slot only started */
	for (int st = SS_AWAIT_HEADER; st < SS_CLOSING; st++)
		cr_assert_eq(session_transition(st, SE_ABORT), SS_CLOSING);
	for (int ev = 0; ev < SE__COUNT; ev++) {
		cr_assert_eq(session_transition(SS_CLOSING, ev) != SS__COUNT, ev == SE_RELEASED);
		cr_assert_eq(session_transition(SS_FREE, ev) != SS__COUNT,
			     ev == SE_START || ev == SE_START_PROXY);
	}
	cr_assert_gt(allowed, 0);
}

Test(session, out_of_range_refused)
{
	cr_assert_eq(session_transition(SS__COUNT, SE_START), SS__COUNT);
	cr_assert_eq(session_transition(SS_FREE, SE__COUNT), SS__COUNT);
}

Test(session, names)
{
	cr_assert_str_eq(session_state_name(SS_CLOSING), "closing");
	cr_assert_str_eq(session_event_name(SE_ABORT), "abort");
	cr_assert_str_eq(session_state_name(SS__COUNT), "?");
}

Test(tag, round_trips_every_field)
{
	uint64_t t = tag_make(TAG_SLOT_MAX, TAG_GEN_MASK, 15, OP_CLOSE);

	cr_assert_eq(tag_slot(t), TAG_SLOT_MAX);
	cr_assert_eq(tag_gen(t), TAG_GEN_MASK);
	cr_assert_eq(tag_side(t), 15);
	cr_assert_eq(tag_op(t), OP_CLOSE);
	t = tag_make(12345, 678, 1, OP_RECV);
	cr_assert_eq(tag_slot(t), 12345);
	cr_assert_eq(tag_gen(t), 678);
	cr_assert_eq(tag_side(t), 1);
	cr_assert_eq(tag_op(t), OP_RECV);
	/* the generation wraps inside its field, never spilling into the slot */
	cr_assert_eq(tag_slot(tag_make(7, TAG_GEN_MASK + 1, 0, OP_SEND)), 7);
	cr_assert_eq(tag_gen(tag_make(7, TAG_GEN_MASK + 1, 0, OP_SEND)), 0);
}
