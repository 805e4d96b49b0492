/* session: the state machine of one client <-> upstream pair and its two directions.
 * Owns the order of bytes (one send in flight per direction, short sends finished first),
 * half-close, back-pressure and teardown. Must never free a slot or a buffer the kernel
 * may still use: buffers go back only when their send completed or the session released. */
#include "uproxy/session.h"

#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "uproxy/timer.h"
#include "uproxy/util.h"
#include "uproxy/accesslog.h"
#include "uproxy/backend.h"
#include "uproxy/bufring.h"
#include "uproxy/config.h"
#include "uproxy/loop.h"
#include "uproxy/acl.h"
#include "uproxy/climit.h"
#include "uproxy/service.h"
#include "uproxy/sni.h"

/* ---- the transition table: the only place that says which state follows which ---- */

static const struct {
	uint8_t from, ev, to;
} transitions[] = {
	{ SS_FREE, SE_START, SS_CONNECTING },
	{ SS_FREE, SE_START_PROXY, SS_AWAIT_HEADER },
	{ SS_AWAIT_HEADER, SE_HEADER_DONE, SS_CONNECTING },
	{ SS_AWAIT_HEADER, SE_ABORT, SS_CLOSING },
	{ SS_CONNECTING, SE_CONNECTED, SS_STREAMING },
	{ SS_CONNECTING, SE_ABORT, SS_CLOSING },
	{ SS_STREAMING, SE_C2U_DONE, SS_CLIENT_DONE },
	{ SS_STREAMING, SE_U2C_DONE, SS_UPSTREAM_DONE },
	{ SS_STREAMING, SE_ABORT, SS_CLOSING },
	{ SS_CLIENT_DONE, SE_U2C_DONE, SS_CLOSING },
	{ SS_CLIENT_DONE, SE_ABORT, SS_CLOSING },
	{ SS_UPSTREAM_DONE, SE_C2U_DONE, SS_CLOSING },
	{ SS_UPSTREAM_DONE, SE_ABORT, SS_CLOSING },
	{ SS_CLOSING, SE_RELEASED, SS_FREE },
};

static const char *const state_names[SS__COUNT] = {
	"free",	       "await_header",	"connecting", "streaming",
	"client_done", "upstream_done", "closing",
};
static const char *const event_names[SE__COUNT] = {
	"start",    "start_proxy", "header_done", "connected",
	"c2u_done", "u2c_done",	   "abort",	  "released",
};

enum session_state session_transition(enum session_state from, enum session_event ev)
{
	for (size_t i = 0; i < sizeof(transitions) / sizeof(transitions[0]); i++) {
		if (transitions[i].from == from && transitions[i].ev == ev)
			return (enum session_state)transitions[i].to;
	}
	return SS__COUNT;
}

const char *session_state_name(enum session_state s)
{
	return (unsigned)s < SS__COUNT ? state_names[s] : "?";
}

const char *session_event_name(enum session_event e)
{
	return (unsigned)e < SE__COUNT ? event_names[e] : "?";
}

/* Applies ev; an event the table forbids is a logic error worth crashing on in tests. */
static void fire(struct session_env *e, struct session *s, enum session_event ev)
{
	enum session_state next = session_transition((enum session_state)s->state, ev);

	if (next == SS__COUNT) {
		log_error("session %u: event %s not allowed in state %s", session_slot(e, s),
			  session_event_name(ev), session_state_name((enum session_state)s->state));
		abort();
	}
	s->state = (uint8_t)next;
}

/* ---- helpers ---- */

static inline uint64_t stag(const struct session_env *e, const struct session *s, unsigned int side,
			    enum loop_op op)
{
	return tag_make(session_slot(e, s), s->gen, side, op);
}

/* The listener the session came in on, and the pool it forwards to (once chosen). */
static inline struct svc *sv(const struct session_env *e, const struct session *s)
{
	return &e->svcs[s->svc];
}

static inline struct upool *up(const struct session_env *e, const struct session *s)
{
	return &e->pools[s->pool];
}

/* n bytes of direction d forwarded (or committed to go upstream): the session's, the
 * listener's and the worker's counters. */
static inline void count_bytes(struct session_env *e, struct session *s, unsigned int d, uint64_t n)
{
	s->bytes[d] += n;
	sv(e, s)->st.bytes[d] += n;
	e->st->bytes[d] += n;
}

static void dir_reset(struct session_dir *dr)
{
	dr->head = BUFRING_NIL;
	dr->tail = BUFRING_NIL;
	dr->head_off = 0;
	dr->queued = 0;
	dr->send_n = 0;
	dr->flags = 0;
	dr->fb = BUFRING_NIL;
}

/* One wake-up of a multishot recv can fill up to 32 buffers (the kernel's MULTISHOT_MAX_RETRY)
 * before back-pressure gets a say; with fewer free buffers than that above half the pool, a
 * single-shot recv takes exactly one buffer per arm instead. */
#define RECV_MULTISHOT_BURST 32u
/* Below this share of the pool free (1/16: 128 of 2,048 buffers, 4 of 64), a direction
 * receives into a fallback buffer of its own instead: whatever other sessions pin, each
 * session can always move its bytes, and no direction ever waits for buffers. */
#define RECV_POOL_RESERVE_DIVISOR 16u

static bool closing(const struct session *s)
{
	return s->state == SS_CLOSING;
}

static void teardown(struct session_env *e, struct session *s, enum close_reason reason, bool rst);

/* Arms a receive on direction d: from the shared pool while it has room, else into a fallback
 * buffer (one per direction at most, so a session's fallback memory is bounded). */
static void recv_arm_from(struct session_env *e, struct session *s, unsigned int d, bool pool_ok)
{
	struct session_dir *dr = &s->dir[d];
	uint32_t avail = bufring_available(e->bufs);
	uint64_t tag = stag(e, s, d, OP_RECV);

	if (closing(s))
		return;
	if (pool_ok && avail > e->bufs->count / RECV_POOL_RESERVE_DIVISOR) {
		if (avail <= e->bufs->count / 2 + RECV_MULTISHOT_BURST) {
			loop_recv(e->loop, s->fd[d], e->bufs->bgid, tag);
		} else if (e->recv_bundle) {
			loop_recv_bundle(e->loop, s->fd[d], e->bufs->bgid, tag);
			dr->flags |= DIR_RECV_BUNDLE;
		} else {
			loop_recv_multishot(e->loop, s->fd[d], e->bufs->bgid, tag);
		}
	} else {
		uint32_t bid = bufring_fallback_get(e->bufs);

		if (bid == BUFRING_NIL) {
			/* Out of memory: fail this session loudly, never park it. */
			teardown(e, s, CLOSE_RESOURCE, false);
			return;
		}
		e->st->fallback_recvs++;
		dr->fb = bid;
		dr->flags |= DIR_RECV_FB;
		loop_recv_buf(e->loop, s->fd[d], bufring_data(e->bufs, bid), BUFRING_FALLBACK_SIZE,
			      tag);
	}
	dr->flags |= DIR_RECV_ARMED;
	s->inflight++;
}

static void recv_arm(struct session_env *e, struct session *s, unsigned int d)
{
	recv_arm_from(e, s, d, true);
}

/* The high-water mark in force now: the full mark while at least half of the buffer pool is
 * free, shrinking linearly to zero (pause as soon as anything waits to be sent) as the free
 * half runs out. Readers that never read then hold a buffer or two each instead of the whole
 * pool, and the connections that do move keep buffers to move with. */
static uint32_t high_water_now(const struct session_env *e)
{
	uint32_t free = bufring_available(e->bufs), half = e->bufs->count / 2;

	if (free <= half)
		return 0;
	return (uint32_t)((uint64_t)e->high_water * (free - half) / (e->bufs->count - half));
}

/* Should direction d be receiving now? (not while paused, finished, or parked) */
static bool recv_wanted(const struct session_env *e, const struct session *s, unsigned int d)
{
	const struct session_dir *dr = &s->dir[d];

	return !closing(s) && s->state != SS_CONNECTING &&
	       !(dr->flags & (DIR_RECV_ARMED | DIR_EOF)) &&
	       (dr->queued == 0 || dr->queued < high_water_now(e) / 4);
}

static void queue_push(struct session_env *e, struct session_dir *dr, uint32_t bid)
{
	if (dr->tail == BUFRING_NIL)
		dr->head = bid;
	else
		e->bufs->next[dr->tail] = bid;
	dr->tail = bid;
	dr->queued += e->bufs->len[bid];
}

/* Gives every queued buffer of dr back to the ring (teardown only). */
static void queue_drop(struct session_env *e, struct session_dir *dr)
{
	uint32_t bid = dr->head;

	while (bid != BUFRING_NIL) {
		uint32_t next = e->bufs->next[bid];

		bufring_put(e->bufs, bid);
		bid = next;
	}
	dr->head = dr->tail = BUFRING_NIL;
	dr->queued = 0;
	dr->head_off = 0;
}

/* Sends what direction d has queued, or forwards its EOF once the queue is empty. One send in
 * flight per direction keeps the byte order. */
static void dir_pump(struct session_env *e, struct session *s, unsigned int d)
{
	struct session_dir *dr = &s->dir[d];
	int out = s->fd[!d];

	if (dr->send_n != 0 || closing(s))
		return;
	if (dr->head != BUFRING_NIL) {
		uint32_t bid = dr->head;
		uint64_t tag = stag(e, s, d, OP_SEND);

		if (e->bufs->next[bid] == BUFRING_NIL) {
			loop_send(e->loop, out, bufring_data(e->bufs, bid) + dr->head_off,
				  e->bufs->len[bid] - dr->head_off, tag);
			dr->send_n = 1;
		} else {
			unsigned int n = 0;

			for (; bid != BUFRING_NIL && n < DIR_IOV_MAX;
			     bid = e->bufs->next[bid], n++) {
				uint32_t off = n == 0 ? dr->head_off : 0;

				dr->iov[n].iov_base = bufring_data(e->bufs, bid) + off;
				dr->iov[n].iov_len = e->bufs->len[bid] - off;
			}
			memset(&dr->msg, 0, sizeof(dr->msg));
			dr->msg.msg_iov = dr->iov;
			dr->msg.msg_iovlen = n;
			loop_sendmsg(e->loop, out, &dr->msg, tag);
			dr->send_n = (uint16_t)n;
		}
		s->inflight++;
		return;
	}
	if ((dr->flags & (DIR_EOF | DIR_SHUT_SENT)) == DIR_EOF) {
		loop_shutdown(e->loop, out, SHUT_WR, stag(e, s, d, OP_SHUTDOWN));
		dr->flags |= DIR_SHUT_SENT;
		s->inflight++;
	}
}

/* Cancels, by tag, every request that may be pending on fd[side]: a pending recv would
 * otherwise hold the socket open after the close, and no FIN or RST would go out. By tag, not
 * by fd: the kernel finds a tag in its hash table, while a cancel by fd walks every pending
 * request, which made tearing down thousands of sessions at once quadratic (6,000 client
 * resets took 5.9 s to release; see bench/RESULTS.md). A tag no longer pending costs one
 * -ENOENT completion. prev is the state before the teardown. */
static void cancel_side(struct session_env *e, struct session *s, unsigned int side,
			enum session_state prev)
{
	uint64_t targets[4];
	unsigned int n = 0;

	if (side == SIDE_CLIENT) {
		if (s->dir[DIR_C2U].flags & DIR_RECV_ARMED)
			targets[n++] = stag(e, s, DIR_C2U, OP_RECV);
		if (s->dir[DIR_U2C].send_n != 0)
			targets[n++] = stag(e, s, DIR_U2C, OP_SEND);
		if (prev == SS_AWAIT_HEADER)
			targets[n++] = stag(e, s, SIDE_CLIENT, OP_HDR_RECV);
	} else {
		if (s->dir[DIR_U2C].flags & DIR_RECV_ARMED)
			targets[n++] = stag(e, s, DIR_U2C, OP_RECV);
		if (s->dir[DIR_C2U].send_n != 0) {
			targets[n++] = stag(e, s, DIR_C2U, OP_SEND);
			targets[n++] = stag(e, s, DIR_C2U, OP_PRESEND);
		}
		if (prev == SS_CONNECTING)
			targets[n++] = stag(e, s, SIDE_UPSTREAM, OP_CONNECT);
	}
	for (unsigned int i = 0; i < n; i++) {
		loop_cancel(e->loop, targets[i], stag(e, s, side, OP_CANCEL));
		s->inflight++;
	}
}

/* Closes both fds, cancelling what is pending on them first. The order of cancel and close
 * does not matter: the socket goes when the last reference does. */
static void close_fds(struct session_env *e, struct session *s, bool rst, enum session_state prev)
{
	for (unsigned int side = 0; side < 2; side++) {
		int fd = s->fd[side];

		if (fd < 0)
			continue;
		if (rst)
			sock_linger_rst(fd);
		if (s->inflight > 0)
			cancel_side(e, s, side, prev);
		loop_close(e->loop, fd, stag(e, s, side, OP_CLOSE));
		s->inflight++;
		s->fd[side] = -1;
	}
}

/* Bytes the kernel holds unread on fd's receive queue (0 if unknown). */
static int unread_bytes(int fd)
{
	int n = 0;

	if (fd < 0 || ioctl(fd, SIOCINQ, &n) < 0)
		return 0;
	return n;
}

/* Which sides lose bytes if the session ends now: bytes queued in the session for a side, the
 * PROXY/early bytes not yet sent upstream, or input unread in the other side's socket. */
static unsigned int lost_sides(struct session_env *e, const struct session *s)
{
	unsigned int lost = 0;

	/* While a PROXY header is awaited, nothing has been forwarded: a rejected header is a
	 * protocol error (reason=protocol), not lost bytes. */
	if (s->state == SS_AWAIT_HEADER)
		return 0;
	if (s->dir[DIR_U2C].queued > 0 || unread_bytes(s->fd[SIDE_UPSTREAM]) > 0)
		lost |= SESSION_LOST_CLIENT;
	if (s->dir[DIR_C2U].queued > 0 || unread_bytes(s->fd[SIDE_CLIENT]) > 0 ||
	    (s->pre_used &&
	     (e->pre[session_slot(e, s)].len > e->pre[session_slot(e, s)].off ||
	      e->pre[session_slot(e, s)].hello_len > e->pre[session_slot(e, s)].hello_off)))
		lost |= SESSION_LOST_UPSTREAM;
	return lost;
}

/* Ends the session. rst: a peer reset or failed, pass the reset on. Otherwise the close is a
 * clean FIN only if no byte is lost; if any is, both sides get an RST, so neither peer can
 * mistake a cut stream for a finished one (the sender learns its bytes did not arrive). */
static void teardown(struct session_env *e, struct session *s, enum close_reason reason, bool rst)
{
	enum session_state prev = (enum session_state)s->state;
	unsigned int lost;

	if (closing(s))
		return;
	/* A refused client was never forwarded: nothing of it is "lost" (if it sent bytes, the
	 * kernel's close of a socket with unread input is an RST anyway). */
	lost = reason == CLOSE_DENIED || reason == CLOSE_LIMITED ? 0 : lost_sides(e, s);
	if (lost != 0) {
		s->truncated = (uint8_t)lost;
		if (lost & SESSION_LOST_CLIENT) {
			e->st->truncated[SIDE_CLIENT]++;
			sv(e, s)->st.truncated[SIDE_CLIENT]++;
		}
		if (lost & SESSION_LOST_UPSTREAM) {
			e->st->truncated[SIDE_UPSTREAM]++;
			sv(e, s)->st.truncated[SIDE_UPSTREAM]++;
		}
		rst = true;
	}
	fire(e, s, SE_ABORT);
	s->reason = (uint8_t)reason;
	timer_cancel(e->wheel, &s->timer);
	close_fds(e, s, rst, prev);
}

void session_abort(struct session_env *e, struct session *s, enum close_reason reason)
{
	teardown(e, s, reason, false);
}

/* ---- events ---- */

/* A connect to backend id succeeded or failed: passive health (--fail-threshold), logged when
 * the upstream changes state. */
static void backend_outcome(struct session_env *e, struct session *s, bool ok)
{
	struct upool *p = up(e, s);
	uint32_t id = s->backend;
	char buf[ADDR_STRLEN];

	e->backends_dirty = true;
	if (backend_report(p->bp, id, ok, e->now_ms))
		log_warn("worker %d: upstream %s is %s (pool %s)", e->worker_id,
			 addr_format(&p->baddr[id], buf, sizeof(buf)),
			 ok ? "up again" : "down (connects keep failing)", p->cfg.name);
	upool_watch_backup(p, id, e->worker_id);
}

/* Picks the next upstream for s (skipping the ones it already failed on) and starts the
 * socket + connect. Returns false when the pool has nothing left to try. */
static bool connect_next(struct session_env *e, struct session *s)
{
	const struct sockaddr *client = NULL;
	uint32_t tried[SESSION_MAX_TRIES];
	const struct addr *a;
	int id;

	if (s->have_peer)
		client = &e->peer_addrs[session_slot(e, s)].u.sa;
	for (unsigned int i = 0; i < s->ntried; i++)
		tried[i] = s->tried[i];
	id = backend_pick(up(e, s)->bp, client, e->now_ms, tried, s->ntried);
	if (id < 0)
		return false;
	backend_acquire(up(e, s)->bp, (uint32_t)id);
	e->backends_dirty = true;
	s->backend = (uint32_t)id;
	s->tried[s->ntried++] = (uint16_t)id;
	a = &up(e, s)->baddr[id];
	e->st->connect_attempts++;
	s->connect_start_us = monotonic_us();
	loop_socket(e->loop, a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC,
		    a->u.sa.sa_family == AF_UNIX ? 0 : IPPROTO_TCP,
		    stag(e, s, SIDE_UPSTREAM, OP_SOCKET));
	s->inflight++;
	return true;
}

/* Forwards to pool (an upool index): the session holds it until released. */
static void connect_first(struct session_env *e, struct session *s, uint16_t pool)
{
	s->pool = (uint8_t)pool;
	e->pools[pool].refs++;
	if (!connect_next(e, s)) {
		log_warn("listener %s: no upstream available in pool %s (every one is removed): "
			 "client closed",
			 sv(e, s)->cfg.name, up(e, s)->cfg.name);
		teardown(e, s, CLOSE_CONNECT_FAILED, false);
	}
}

static void header_recv(struct session_env *e, struct session *s)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	loop_recv_buf(e->loop, s->fd[SIDE_CLIENT], pr->data + pr->len, PROXYPROTO_MAX_LEN - pr->len,
		      stag(e, s, SIDE_CLIENT, OP_HDR_RECV));
	s->inflight++;
}

static bool sni_decide(struct session_env *e, struct session *s);

static void hello_recv(struct session_env *e, struct session *s)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	loop_recv_buf(e->loop, s->fd[SIDE_CLIENT], pr->hello + pr->hello_len,
		      SESSION_HELLO_MAX - pr->hello_len, stag(e, s, SIDE_CLIENT, OP_HDR_RECV));
	s->inflight++;
}

/* The client as the listener's access list and limits see it: the PROXY header's source
 * when one was accepted, else the socket's peer. NULL when unknown. */
static const struct sockaddr *client_sa(const struct session_env *e, const struct session *s)
{
	return s->have_peer ? &e->peer_addrs[session_slot(e, s)].u.sa : NULL;
}

/* The listener's access list and per-client limits. Returns false after closing a refused
 * client at once (a FIN; an RST if it had sent bytes already: nothing of it is forwarded). */
static bool admit(struct session_env *e, struct session *s)
{
	struct svc *v = sv(e, s);
	const struct sockaddr *sa = client_sa(e, s);
	unsigned long suppressed;
	char buf[ADDR_STRLEN];

	if (sa == NULL)
		return true;
	if (v->cfg.nacl > 0 && !acl_allows(v->cfg.acl, v->cfg.nacl, sa)) {
		v->st.denied++;
		if (log_enabled(LOG_INFO) && log_ratelimit_ok(&v->rl_deny, &suppressed))
			log_info("listener %s: client %s denied by the access list (%lu similar "
				 "messages suppressed)",
				 v->cfg.name,
				 addr_format(&e->peer_addrs[session_slot(e, s)], buf, sizeof(buf)),
				 suppressed);
		teardown(e, s, CLOSE_DENIED, false);
		return false;
	}
	if (v->climit != NULL) {
		enum climit_verdict vd = climit_admit(v->climit, sa, e->now_ms, &s->climit_slot);
		static const char *const what[] = { "too many connections",
						    "too many new "
						    "connections per second",
						    "the client table is full" };
		int k = vd == CLIMIT_OVER_CONNS ? 0 : vd == CLIMIT_OVER_RATE ? 1 : 2;

		if (vd == CLIMIT_OK) {
			s->climit_held = s->climit_slot != CLIMIT_NO_SLOT;
			return true;
		}
		v->st.limited[k]++;
		if (log_enabled(LOG_INFO) && log_ratelimit_ok(&v->rl_limit, &suppressed))
			log_info("listener %s: client %s refused: %s (%lu similar messages "
				 "suppressed)",
				 v->cfg.name,
				 addr_format(&e->peer_addrs[session_slot(e, s)], buf, sizeof(buf)),
				 what[k], suppressed);
		teardown(e, s, CLOSE_LIMITED, false);
		return false;
	}
	return true;
}

/* sni-route: the client is admitted and its PROXY header (if any) read; wait for its
 * ClientHello, which chooses the pool. */
static void sni_wait_start(struct session_env *e, struct session *s)
{
	struct svc *v = sv(e, s);
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	pr->hello = malloc(SESSION_HELLO_MAX);
	if (pr->hello == NULL) {
		teardown(e, s, CLOSE_RESOURCE, true);
		return;
	}
	/* Bytes that came behind a PROXY header are the start of the ClientHello; they are
	 * counted when the hello is routed. */
	memcpy(pr->hello, pr->data, pr->len);
	pr->hello_len = pr->len;
	pr->hello_off = 0;
	pr->len = 0;
	s->sni_wait = 1;
	timer_arm(e->wheel, &s->timer, e->now_ms + v->cfg.sni_timeout_ms);
	if (pr->hello_len == 0 || !sni_decide(e, s))
		hello_recv(e, s);
}

void session_start(struct session_env *e, struct session *s, int client_fd, unsigned int svc)
{
	uint32_t slot = session_slot(e, s);
	struct session_pre *pr = &e->pre[slot];
	struct svc *v = &e->svcs[svc];

	s->svc = (uint8_t)svc;
	s->pool = UINT8_MAX;
	s->sni_wait = 0;
	s->climit_held = 0;
	v->sessions++;
	v->st.accepted++;
	fire(e, s, v->cfg.accept_proxy || v->cfg.nsni_routes > 0 ? SE_START_PROXY : SE_START);
	s->fd[SIDE_CLIENT] = client_fd;
	s->fd[SIDE_UPSTREAM] = -1;
	s->backend = SESSION_NO_BACKEND;
	s->ntried = 0;
	s->inflight = 0;
	s->reason = CLOSE_NORMAL;
	s->truncated = 0;
	s->start_ms = e->now_ms;
	s->bytes[0] = s->bytes[1] = 0;
	s->have_peer = 0;
	s->wait_fd = 0;
	if (v->needs_peer) {
		struct addr *pa = &e->peer_addrs[slot];

		/* One syscall per session, only for features that need the client's address
		 * (access list, limits, hash balancing, access log, PROXY protocol): a multishot
		 * accept shares one address buffer between its completions, so it is asked for
		 * here. */
		pa->len = sizeof(pa->u);
		if (getpeername(client_fd, &pa->u.sa, &pa->len) == 0)
			s->have_peer = 1;
	}
	/* The slot's pre-send area is touched only by listeners that use it, so that idle
	 * sessions of plain listeners pin no more memory than before. */
	s->pre_used = v->cfg.send_proxy || v->cfg.accept_proxy || v->cfg.nsni_routes > 0;
	if (s->pre_used) {
		pr->len = pr->off = 0;
		pr->hello = NULL;
		pr->hello_len = pr->hello_off = 0;
	}
	if (v->cfg.send_proxy || v->cfg.accept_proxy) {
		memset(&pr->src, 0, sizeof(pr->src));
		memset(&pr->dst, 0, sizeof(pr->dst));
		if (s->have_peer)
			pr->src = e->peer_addrs[slot];
		pr->dst.len = sizeof(pr->dst.u);
		if (getsockname(client_fd, &pr->dst.u.sa, &pr->dst.len) < 0)
			memset(&pr->dst, 0, sizeof(pr->dst));
	}
	if (v->cfg.keepalive[SIDE_CLIENT].on && !v->cfg.listen.unix_sock)
		sock_set_keepalive(client_fd, v->cfg.keepalive[SIDE_CLIENT].idle_s,
				   v->cfg.keepalive[SIDE_CLIENT].interval_s,
				   v->cfg.keepalive[SIDE_CLIENT].count);
	timer_node_init(&s->timer, 0, slot);
	dir_reset(&s->dir[DIR_C2U]);
	dir_reset(&s->dir[DIR_U2C]);
	if (v->cfg.accept_proxy) {
		timer_arm(e->wheel, &s->timer, e->now_ms + SESSION_HEADER_TIMEOUT_MS);
		header_recv(e, s);
		return;
	}
	if (!admit(e, s))
		return;
	if (s->state == SS_AWAIT_HEADER) { /* sni-route (accept-proxy went above) */
		sni_wait_start(e, s);
		return;
	}
	connect_first(e, s, v->pool);
}

/* sni-route: decides on the ClientHello bytes so far. Returns false to read more. */
static bool sni_decide(struct session_env *e, struct session *s)
{
	struct svc *v = sv(e, s);
	struct session_pre *pr = &e->pre[session_slot(e, s)];
	char name[256];
	enum sni_result r = sni_parse(pr->hello, pr->hello_len, name, sizeof(name));
	uint16_t pool = v->pool;
	unsigned long suppressed;

	if (r == SNI_NEED_MORE && pr->hello_len < SESSION_HELLO_MAX)
		return false;
	if (r == SNI_NEED_MORE)
		r = SNI_TOO_BIG;
	s->sni_wait = 0;
	timer_cancel(e->wheel, &s->timer);
	if (r == SNI_FOUND) {
		int i = sni_route_match(v->cfg.sni_routes, v->cfg.nsni_routes, name);

		if (i >= 0) {
			pool = v->route_pool[i];
			v->st.sni_routed++;
		}
		log_debug("listener %s: server name '%s' -> pool %s", v->cfg.name, name,
			  pool == UPOOL_NONE ? "(none)" : e->pools[pool].cfg.name);
	} else if (r == SNI_NO_SNI || r == SNI_NOT_TLS) {
		if (v->cfg.sni_missing_close)
			pool = UPOOL_NONE;
	} else {
		/* Too big or malformed: nothing sensible to route; the client learns by a reset. */
		if (log_enabled(LOG_INFO) && log_ratelimit_ok(&e->rl_proxy, &suppressed))
			log_info("listener %s: client closed: ClientHello %s (%lu similar "
				 "messages suppressed)",
				 v->cfg.name, sni_result_name(r), suppressed);
		teardown(e, s, CLOSE_PROTOCOL, true);
		return true;
	}
	if (pool == UPOOL_NONE) {
		teardown(e, s, CLOSE_PROTOCOL, true);
		return true;
	}
	count_bytes(e, s, DIR_C2U, pr->hello_len);
	fire(e, s, SE_HEADER_DONE);
	connect_first(e, s, pool);
	return true;
}

/* More of the client's ClientHello arrived (or the client went away). */
static void on_hello(struct session_env *e, struct session *s, int res)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	if (closing(s))
		return;
	if (res <= 0) {
		teardown(e, s, res == 0 ? CLOSE_PROTOCOL : CLOSE_CLIENT_RESET, res < 0);
		return;
	}
	pr->hello_len += (uint32_t)res;
	if (!sni_decide(e, s))
		hello_recv(e, s);
}

/* --accept-proxy: more of the client's header arrived (or the client went away). */
static void on_header(struct session_env *e, struct session *s, int res)
{
	uint32_t slot = session_slot(e, s);
	struct session_pre *pr = &e->pre[slot];
	struct proxyproto_result r;
	unsigned long suppressed;
	int n;

	if (closing(s))
		return;
	if (s->sni_wait) {
		on_hello(e, s, res);
		return;
	}
	if (res <= 0) {
		teardown(e, s, res == 0 ? CLOSE_PROTOCOL : CLOSE_CLIENT_RESET, false);
		return;
	}
	pr->len += (uint16_t)res;
	n = proxyproto_parse(pr->data, pr->len, &r);
	if (n == 0 && pr->len < PROXYPROTO_MAX_LEN) {
		header_recv(e, s);
		return;
	}
	if (n <= 0) {
		char buf[ADDR_STRLEN];

		if (log_enabled(LOG_WARN) && log_ratelimit_ok(&e->rl_proxy, &suppressed))
			log_warn("client %s: no valid PROXY protocol header (%s); closed (%lu "
				 "similar messages suppressed)",
				 s->have_peer ? addr_format(&e->peer_addrs[slot], buf, sizeof(buf))
					      : "?",
				 n < 0 && r.why ? r.why : "too long", suppressed);
		teardown(e, s, CLOSE_PROTOCOL, false);
		return;
	}
	if (r.command == PROXYPROTO_CMD_PROXY) {
		/* The address the header carries is the client from now on. */
		pr->src = r.src;
		pr->dst = r.dst;
		e->peer_addrs[slot] = r.src;
		s->have_peer = 1;
	}
	/* Client bytes that came behind the header go upstream first. */
	memmove(pr->data, pr->data + n, pr->len - (uint32_t)n);
	pr->len = (uint16_t)(pr->len - (uint32_t)n);
	timer_cancel(e->wheel, &s->timer);
	if (sv(e, s)->cfg.nsni_routes > 0) {
		if (admit(e, s))
			sni_wait_start(e, s);
		return;
	}
	count_bytes(e, s, DIR_C2U, pr->len);
	if (!admit(e, s))
		return;
	fire(e, s, SE_HEADER_DONE);
	connect_first(e, s, sv(e, s)->pool);
}

/* Sends the next piece of what goes upstream before the client's stream: pr->data (the PROXY
 * header, early bytes), then the ClientHello kept for sni-route. */
static void presend(struct session_env *e, struct session *s)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	if (pr->off < pr->len)
		loop_send(e->loop, s->fd[SIDE_UPSTREAM], pr->data + pr->off, pr->len - pr->off,
			  stag(e, s, DIR_C2U, OP_PRESEND));
	else
		loop_send(e->loop, s->fd[SIDE_UPSTREAM], pr->hello + pr->hello_off,
			  pr->hello_len - pr->hello_off, stag(e, s, DIR_C2U, OP_PRESEND));
	/* Holds the client->upstream queue back until these bytes are out. */
	s->dir[DIR_C2U].send_n = 1;
	s->inflight++;
}

/* Connected: queue the PROXY header (--send-proxy) in front of any early client bytes. */
static void presend_start(struct session_env *e, struct session *s)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	if (!s->pre_used)
		return;
	if (sv(e, s)->cfg.send_proxy) {
		uint8_t hdr[PROXYPROTO_V1_BUILD_MAX];
		const struct addr *src = pr->src.len ? &pr->src : NULL;
		const struct addr *dst = pr->dst.len ? &pr->dst : NULL;
		int h = sv(e, s)->cfg.send_proxy == 1
				? proxyproto_build_v1(src, dst, (char *)hdr, sizeof(hdr))
				: proxyproto_build_v2(src, dst, hdr, sizeof(hdr));

		if (h > 0 && pr->len + (size_t)h <= sizeof(pr->data)) {
			memmove(pr->data + h, pr->data, pr->len);
			memcpy(pr->data, hdr, (size_t)h);
			pr->len = (uint16_t)(pr->len + h);
		}
	}
	pr->off = 0;
	if (pr->len > 0 || pr->hello_len > pr->hello_off)
		presend(e, s);
}

static void on_presend(struct session_env *e, struct session *s, int res)
{
	struct session_pre *pr = &e->pre[session_slot(e, s)];

	s->inflight--;
	s->dir[DIR_C2U].send_n = 0;
	if (closing(s))
		return;
	if (res <= 0) {
		teardown(e, s, CLOSE_UPSTREAM_RESET, true);
		return;
	}
	if (pr->off < pr->len)
		pr->off = (uint16_t)(pr->off + res);
	else
		pr->hello_off += (uint32_t)res;
	if (pr->off < pr->len || pr->hello_off < pr->hello_len) {
		presend(e, s);
		return;
	}
	pr->len = pr->off = 0;
	free(pr->hello);
	pr->hello = NULL;
	pr->hello_len = pr->hello_off = 0;
	dir_pump(e, s, DIR_C2U);
}

/* Gives the session's hold on its backend back (after a failure, or at release). */
static void backend_drop(struct session_env *e, struct session *s)
{
	if (s->backend != SESSION_NO_BACKEND) {
		backend_release(up(e, s)->bp, s->backend);
		e->backends_dirty = true;
		s->backend = SESSION_NO_BACKEND;
	}
}

static void on_socket(struct session_env *e, struct session *s, int res)
{
	unsigned long suppressed;

	if (closing(s)) {
		/* Aborted while the socket was being made: close it too. */
		if (res >= 0) {
			loop_close(e->loop, res, stag(e, s, SIDE_UPSTREAM, OP_CLOSE));
			s->inflight++;
		}
		return;
	}
	if (res < 0) {
		if (log_enabled(LOG_WARN) && log_ratelimit_ok(&e->rl_socket, &suppressed))
			log_warn("cannot create upstream socket: %s; pausing accepts, the client "
				 "waits up to --connect-timeout (%lu similar messages suppressed)",
				 strerror(-res), suppressed);
		if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
			/* Out of fds: stop accepting, and let this client wait for one (retried
			 * every back-off period, up to --connect-timeout) instead of closing it. */
			e->out |= SESSION_OUT_NEED_FD;
			backend_drop(e, s);
			s->ntried--;
			if (e->now_ms - s->start_ms < up(e, s)->cfg.connect_timeout_ms) {
				s->wait_fd = 1;
				timer_arm(e->wheel, &s->timer, e->now_ms + SESSION_FD_WAIT_MS);
				return;
			}
		}
		teardown(e, s, CLOSE_RESOURCE, false);
		return;
	}
	s->fd[SIDE_UPSTREAM] = res;
	/* Two setsockopts per upstream connection (a ring-side setsockopt needs Linux 6.7);
	 * accepted client sockets inherit the same from the listener. */
	sock_set_forwarding(res);
	const struct addr *a = &up(e, s)->baddr[s->backend];

	if (sv(e, s)->cfg.keepalive[SIDE_UPSTREAM].on && a->u.sa.sa_family != AF_UNIX)
		sock_set_keepalive(res, sv(e, s)->cfg.keepalive[SIDE_UPSTREAM].idle_s,
				   sv(e, s)->cfg.keepalive[SIDE_UPSTREAM].interval_s,
				   sv(e, s)->cfg.keepalive[SIDE_UPSTREAM].count);
	/* The connect and its timeout are one linked pair: two CQEs, both counted in flight. */
	loop_connect_timeout(e->loop, res, &a->u.sa, a->len, up(e, s)->cfg.connect_timeout_ms,
			     stag(e, s, SIDE_UPSTREAM, OP_CONNECT),
			     stag(e, s, SIDE_UPSTREAM, OP_LINK_TIMEOUT));
	s->inflight += 2;
}

static void on_connect(struct session_env *e, struct session *s, int res)
{
	unsigned long suppressed;
	char buf[ADDR_STRLEN];

	if (closing(s))
		return;
	/* A connect completion while not connecting (none was asked for): refuse loudly
	 * before touching a pool the session does not hold. */
	if (session_transition((enum session_state)s->state, SE_CONNECTED) == SS__COUNT)
		fire(e, s, SE_CONNECTED);
	if (res < 0) {
		const struct addr *a = &up(e, s)->baddr[s->backend];

		/* -ECANCELED here means the linked timeout fired (an abort would be closing). */
		if (res == -ECANCELED)
			res = -ETIMEDOUT;
		e->st->connect_errors++;
		log_debug("connect to %s failed: %s", addr_format(a, buf, sizeof(buf)),
			  strerror(-res));
		backend_outcome(e, s, false);
		backend_drop(e, s);
		loop_close(e->loop, s->fd[SIDE_UPSTREAM], stag(e, s, SIDE_UPSTREAM, OP_CLOSE));
		s->inflight++;
		s->fd[SIDE_UPSTREAM] = -1;
		if (s->ntried <= up(e, s)->cfg.retries && connect_next(e, s))
			return;
		if (log_enabled(LOG_WARN) && log_ratelimit_ok(&e->rl_connect, &suppressed))
			log_warn("cannot connect to upstream %s: %s (after %u attempt(s); client "
				 "closed; %lu similar messages suppressed)",
				 addr_format(a, buf, sizeof(buf)), strerror(-res), s->ntried,
				 suppressed);
		teardown(e, s, CLOSE_CONNECT_FAILED, false);
		return;
	}
	backend_outcome(e, s, true);
	stats_connect_observe(e->st, monotonic_us() - s->connect_start_us);
	fire(e, s, SE_CONNECTED);
	timer_arm(e->wheel, &s->timer, e->now_ms + sv(e, s)->cfg.idle_timeout_ms);
	presend_start(e, s);
	recv_arm(e, s, DIR_C2U);
	recv_arm(e, s, DIR_U2C);
}

static bool half_closed(const struct session *s)
{
	return s->state == SS_CLIENT_DONE || s->state == SS_UPSTREAM_DONE;
}

/* Progress (bytes received from, or sent to, either peer): the session may now stay inactive
 * for --idle-timeout, or --fin-timeout once half-closed. Both are inactivity timers, like
 * nginx's proxy_timeout and HAProxy's timeout client-fin, counted from the last progress in
 * either direction. timer_arm pushing a deadline later is one store. */
static void timer_touch(struct session_env *e, struct session *s)
{
	timer_arm(e->wheel, &s->timer,
		  e->now_ms + (half_closed(s) ? sv(e, s)->cfg.fin_timeout_ms
					      : sv(e, s)->cfg.idle_timeout_ms));
}

void session_timeout(struct session_env *e, struct session *s)
{
	if (s->state == SS_AWAIT_HEADER) {
		if (s->sni_wait)
			log_debug("session %u: no complete ClientHello within %u ms",
				  session_slot(e, s), sv(e, s)->cfg.sni_timeout_ms);
		else
			log_debug("session %u: no PROXY protocol header within %d ms",
				  session_slot(e, s), SESSION_HEADER_TIMEOUT_MS);
		/* A ClientHello cut short: the client sent bytes we drop, so it gets an RST. */
		teardown(e, s, CLOSE_PROTOCOL, s->sni_wait);
		return;
	}
	if (s->state == SS_CONNECTING && s->wait_fd) {
		/* Waited for an fd for the upstream socket: try again. */
		s->wait_fd = 0;
		if (!connect_next(e, s))
			teardown(e, s, CLOSE_CONNECT_FAILED, false);
		return;
	}
	if (closing(s) || s->state == SS_CONNECTING)
		return;
	log_debug("session %u: %s timeout", session_slot(e, s), half_closed(s) ? "fin" : "idle");
	teardown(e, s, CLOSE_TIMEOUT, false);
}

/* A bundle completion: res bytes in consecutive ring entries from pool buffer first on, each
 * full but the last. Queued in ring order (or given back if the session is closing). */
static void take_bundle(struct session_env *e, struct session *s, unsigned int d, uint32_t first,
			uint32_t res)
{
	uint32_t n = (res + e->bufs->size - 1) / e->bufs->size;

	for (uint32_t i = 0; i < n; i++) {
		uint32_t bid = bufring_bundle_bid(e->bufs, first, i);
		uint32_t len = res > e->bufs->size ? e->bufs->size : res;

		bufring_took(e->bufs, bid, len);
		res -= len;
		if (closing(s))
			bufring_put(e->bufs, bid);
		else
			queue_push(e, &s->dir[d], bid);
	}
}

static void on_recv(struct session_env *e, struct session *s, unsigned int d,
		    const struct loop_cqe *c)
{
	struct session_dir *dr = &s->dir[d];
	bool more = c->flags & LOOP_CQE_MORE;
	bool bundle = dr->flags & DIR_RECV_BUNDLE;
	int res = c->res;
	uint32_t bid = BUFRING_NIL;

	if (!more) {
		dr->flags &= (uint16_t) ~(DIR_RECV_ARMED | DIR_RECV_CANCEL | DIR_RECV_BUNDLE);
		s->inflight--;
	}
	if (dr->flags & DIR_RECV_FB) {
		/* A single-shot recv into this direction's fallback buffer. */
		bid = dr->fb;
		dr->fb = BUFRING_NIL;
		dr->flags &= (uint16_t)~DIR_RECV_FB;
		bufring_fallback_took(e->bufs, bid, res > 0 ? (uint32_t)res : 0);
	} else if (c->flags & LOOP_CQE_BUFFER) {
		bid = c->bid;
		if (bundle && res > (int)e->bufs->size) {
			take_bundle(e, s, d, bid, (uint32_t)res);
			bid = BUFRING_NIL;
		} else {
			bufring_took(e->bufs, bid, res > 0 ? (uint32_t)res : 0);
		}
	}
	if (bid != BUFRING_NIL && (res <= 0 || closing(s)))
		bufring_put(e->bufs, bid);
	else if (bid != BUFRING_NIL)
		queue_push(e, dr, bid);
	if (res > 0 && !closing(s)) {
		count_bytes(e, s, d, (uint64_t)res);
		timer_touch(e, s);
		dir_pump(e, s, d);
		if (dr->queued >= high_water_now(e) &&
		    (dr->flags & (DIR_RECV_ARMED | DIR_RECV_CANCEL)) == DIR_RECV_ARMED) {
			/* Back-pressure: stop reading this peer until the other drains. */
			loop_cancel(e->loop, stag(e, s, d, OP_RECV), stag(e, s, d, OP_CANCEL));
			s->inflight++;
			dr->flags |= DIR_RECV_CANCEL;
			e->st->backpressure++;
		}
	}
	if (closing(s))
		return;
	if (res == 0) {
		dr->flags |= DIR_EOF;
		dir_pump(e, s, d);
		return;
	}
	if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
		/* The peer we read from reset or failed: pass the reset on to the other. */
		teardown(e, s, d == DIR_C2U ? CLOSE_CLIENT_RESET : CLOSE_UPSTREAM_RESET, true);
		return;
	}
	if (res == -ENOBUFS) {
		/* The pool ran dry under this recv: go on at once with a fallback buffer. Never
		 * parked, so the direction keeps a recv armed and sees its peer's FIN or RST. */
		e->st->buf_exhausted++;
		bufring_starved(e->bufs, e->now_ms);
		if (!more && recv_wanted(e, s, d))
			recv_arm_from(e, s, d, false);
		return;
	}
	/* A multishot that ended without an error (CQ overflow, cancel for back-pressure):
	 * re-arm now if the queue has room, otherwise the send completion will. */
	if (!more && recv_wanted(e, s, d))
		recv_arm(e, s, d);
}

static void on_send(struct session_env *e, struct session *s, unsigned int d, int res)
{
	struct session_dir *dr = &s->dir[d];
	uint32_t left;

	s->inflight--;
	dr->send_n = 0;
	if (closing(s))
		return;
	if (res <= 0) {
		/* The peer we write to is gone (EPIPE, ECONNRESET): reset the other one too. */
		teardown(e, s, d == DIR_C2U ? CLOSE_UPSTREAM_RESET : CLOSE_CLIENT_RESET, true);
		return;
	}
	timer_touch(e, s);
	left = (uint32_t)res;
	while (left > 0 && dr->head != BUFRING_NIL) {
		uint32_t bid = dr->head;
		uint32_t rem = e->bufs->len[bid] - dr->head_off;

		if (left < rem) {
			/* Short send: the rest of this buffer goes first next time. */
			dr->head_off += left;
			dr->queued -= left;
			break;
		}
		left -= rem;
		dr->queued -= rem;
		dr->head = e->bufs->next[bid];
		dr->head_off = 0;
		bufring_put(e->bufs, bid);
	}
	if (dr->head == BUFRING_NIL)
		dr->tail = BUFRING_NIL;
	dir_pump(e, s, d);
	if (recv_wanted(e, s, d))
		recv_arm(e, s, d);
}

static void on_shutdown(struct session_env *e, struct session *s, unsigned int d, int res)
{
	s->inflight--;
	if (closing(s))
		return;
	if (res < 0 && res != -ENOTCONN) {
		teardown(e, s, d == DIR_C2U ? CLOSE_UPSTREAM_RESET : CLOSE_CLIENT_RESET, true);
		return;
	}
	s->dir[d].flags |= DIR_DONE;
	fire(e, s, d == DIR_C2U ? SE_C2U_DONE : SE_U2C_DONE);
	if (!closing(s)) {
		/* Half-closed: from now on the session may be inactive for --fin-timeout. */
		timer_touch(e, s);
	} else {
		/* Both directions finished cleanly. */
		s->reason = CLOSE_NORMAL;
		timer_cancel(e->wheel, &s->timer);
		close_fds(e, s, false, SS_CLOSING);
	}
}

static void log_session(struct session_env *e, struct session *s)
{
	struct timespec now;
	struct accesslog_entry le = {
		.client = s->have_peer ? &e->peer_addrs[session_slot(e, s)] : NULL,
		.upstream = s->backend != SESSION_NO_BACKEND ? &up(e, s)->baddr[s->backend] : NULL,
		.listener = sv(e, s)->cfg.name,
		.bytes_in = s->bytes[DIR_C2U],
		.bytes_out = s->bytes[DIR_U2C],
		.duration_ms = e->now_ms - s->start_ms,
		.reason = close_reason_name((enum close_reason)s->reason),
		.truncated = s->truncated,
	};

	clock_gettime(CLOCK_REALTIME_COARSE, &now);
	le.end_realtime_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
	accesslog_add(sv(e, s)->alog, &le);
}

unsigned int session_handle(struct session_env *e, struct session *s, const struct loop_cqe *c)
{
	uint64_t tag = c->tag;
	unsigned int side = tag_side(tag);

	e->out = SESSION_OUT_NONE;
	switch (tag_op(tag)) {
	case OP_SOCKET:
		s->inflight--;
		on_socket(e, s, c->res);
		break;
	case OP_CONNECT:
		s->inflight--;
		on_connect(e, s, c->res);
		break;
	case OP_RECV:
		on_recv(e, s, side, c);
		break;
	case OP_SEND:
		on_send(e, s, side, c->res);
		break;
	case OP_SHUTDOWN:
		on_shutdown(e, s, side, c->res);
		break;
	case OP_HDR_RECV:
		s->inflight--;
		on_header(e, s, c->res);
		break;
	case OP_PRESEND:
		on_presend(e, s, c->res);
		break;
	case OP_LINK_TIMEOUT:
	case OP_CANCEL:
	case OP_CLOSE:
		s->inflight--;
		break;
	default:
		log_error("session %u: unexpected completion op %d", session_slot(e, s),
			  (int)tag_op(tag));
		abort();
	}
	if (closing(s) && s->inflight == 0) {
		struct session_pre *pr = &e->pre[session_slot(e, s)];

		/* Refused clients are counted and logged (rate-limited), not access-logged: an
		 * attacker must not be able to fill the log. */
		if (sv(e, s)->alog != NULL && s->reason != CLOSE_DENIED &&
		    s->reason != CLOSE_LIMITED)
			log_session(e, s);
		if (s->climit_held) {
			climit_release(sv(e, s)->climit, s->climit_slot);
			s->climit_held = 0;
		}
		if (s->pre_used) {
			free(pr->hello);
			pr->hello = NULL;
			pr->hello_len = pr->hello_off = 0;
		}
		queue_drop(e, &s->dir[DIR_C2U]);
		queue_drop(e, &s->dir[DIR_U2C]);
		backend_drop(e, s);
		fire(e, s, SE_RELEASED);
		e->out |= SESSION_OUT_RELEASED;
	}
	return e->out;
}
