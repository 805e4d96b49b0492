/* worker: one ring, its listeners, its session slab and its signalfd. Dispatches each CQE by
 * tag to the session or worker handler, pauses and resumes accepting, and stops cleanly.
 * Must never make a syscall per forwarded byte; everything on the data path is an SQE. */
#include "uproxy/worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

uint32_t worker_max_sessions_for(uint32_t buffers)
{
	return (WORKER_CQ_MAX - buffers - WORKER_BACKLOG - WORKER_CQ_RESERVE) /
	       WORKER_CQES_PER_SESSION;
}

static unsigned int roundup_pow2(unsigned int v)
{
	unsigned int p = 1;

	while (p < v)
		p <<= 1;
	return p;
}

/* ---- listeners ---- */

static int listen_one(const struct addr *a, bool dual_stack, struct listener *l, char *why,
		      size_t whylen)
{
	static const int one = 1;
	char buf[ADDR_STRLEN];
	int fd, zero = 0;

	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	if (fd < 0) {
		snprintf(why, whylen, "cannot create a socket for %s: %s",
			 addr_format(a, buf, sizeof(buf)), strerror(errno));
		return -errno;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* One listener per worker on the same port; the kernel spreads connections by hash. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		snprintf(why, whylen, "cannot set SO_REUSEPORT: %s", strerror(errno));
		close(fd);
		return -errno;
	}
	/* Accepted sockets inherit TCP_NODELAY from the listener: no per-connection syscall. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (a->u.sa.sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, dual_stack ? &zero : &one,
				 sizeof(int));
	if (bind(fd, &a->u.sa, a->len) < 0 || listen(fd, (int)WORKER_BACKLOG) < 0) {
		int err = errno;

		snprintf(why, whylen, "cannot listen on %s: %s%s", addr_format(a, buf, sizeof(buf)),
			 strerror(err),
			 err == EADDRINUSE ? " (another process is using that port)"
			 : err == EACCES	 ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
			 : err == EADDRNOTAVAIL ? " (no local interface has that address)"
						: "");
		close(fd);
		return -err;
	}
	l->fd = fd;
	l->addr = *a;
	l->multi_armed = l->single_armed = false;
	l->cancel_multi = l->cancel_single = false;
	return 0;
}

int worker_listen(const struct hostport *hp, struct listener *out, int max, char *why,
		  size_t whylen)
{
	struct addr addrs[ADDR_MAX_RESOLVED];
	int n, count = 0;

	if (hp->any) {
		struct addr a;

		/* One dual-stack [::] socket takes IPv4 too; fall back to 0.0.0.0 on hosts
		 * without IPv6. */
		memset(&a, 0, sizeof(a));
		a.u.in6.sin6_family = AF_INET6;
		a.u.in6.sin6_addr = in6addr_any;
		a.u.in6.sin6_port = htons(hp->port);
		a.len = sizeof(a.u.in6);
		if (listen_one(&a, true, &out[0], why, whylen) == 0)
			return 1;
		memset(&a, 0, sizeof(a));
		a.u.in4.sin_family = AF_INET;
		a.u.in4.sin_addr.s_addr = htonl(INADDR_ANY);
		a.u.in4.sin_port = htons(hp->port);
		a.len = sizeof(a.u.in4);
		return listen_one(&a, false, &out[0], why, whylen) == 0 ? 1 : -1;
	}
	n = addr_resolve(hp, addrs, max < ADDR_MAX_RESOLVED ? max : ADDR_MAX_RESOLVED, why,
			 whylen);
	if (n < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		if (listen_one(&addrs[i], false, &out[count], why, whylen) < 0) {
			while (count > 0)
				close(out[--count].fd);
			return -1;
		}
		count++;
	}
	return count;
}

/* ---- set-up ---- */

int worker_init(struct worker *w, const struct config *cfg, const struct addr *upstreams,
		int nupstreams, uint32_t max_sessions, char *why, size_t whylen)
{
	unsigned int cq;
	int rc;

	w->cfg = cfg;
	w->upstreams = upstreams;
	w->nupstreams = nupstreams;
	w->max_sessions = max_sessions;
	w->notify_fd = eventfd(0, EFD_CLOEXEC);
	if (w->notify_fd < 0) {
		snprintf(why, whylen, "cannot create an eventfd: %s", strerror(errno));
		return -errno;
	}
	cq = roundup_pow2(WORKER_CQES_PER_SESSION * max_sessions + cfg->buffers + WORKER_BACKLOG +
			  WORKER_CQ_RESERVE);
	if (cq < 2 * WORKER_SQ_ENTRIES) /* the kernel wants CQ >= SQ; twice is its default */
		cq = 2 * WORKER_SQ_ENTRIES;
	if (cq > WORKER_CQ_MAX)
		cq = WORKER_CQ_MAX;
	rc = loop_init(&w->loop, WORKER_SQ_ENTRIES, cq, why, whylen);
	if (rc < 0)
		return rc;
	rc = loop_probe(&w->loop, why, whylen);
	if (rc < 0)
		goto err_loop;
	rc = bufring_init(&w->bufs, &w->loop, 0, cfg->buffers, cfg->buffer_size, why, whylen);
	if (rc < 0)
		goto err_loop;
	/* calloc'd slab: pages are touched only as slots are first used. */
	w->sessions = calloc(max_sessions, sizeof(*w->sessions));
	w->wq_cap = 2 * max_sessions;
	w->waitq = calloc(w->wq_cap, sizeof(*w->waitq));
	if (w->sessions == NULL || w->waitq == NULL) {
		snprintf(why, whylen, "cannot allocate %u session slots", max_sessions);
		rc = -ENOMEM;
		goto err_bufs;
	}
	for (uint32_t i = 0; i < max_sessions; i++) {
		w->sessions[i].next_free = i + 1 < max_sessions ? i + 1 : UINT32_MAX;
		w->sessions[i].fd[0] = w->sessions[i].fd[1] = -1;
	}
	w->free_head = 0;
	{
		uint64_t share = (uint64_t)cfg->buffers * cfg->buffer_size / SESSION_POOL_SHARE_DIVISOR;

		w->high_water = share < SESSION_HIGH_WATER ? (uint32_t)share : SESSION_HIGH_WATER;
		if (w->high_water < 2 * cfg->buffer_size)
			w->high_water = 2 * cfg->buffer_size;
		w->low_water = w->high_water / 4;
	}
	log_debug("worker %d: ring sq=%u cq=%u flags=0x%x ring_fd_registered=%d, %u buffers of "
		  "%u bytes, %u session slots",
		  w->id, WORKER_SQ_ENTRIES, cq, w->loop.setup_flags, w->loop.ring_fd_registered,
		  cfg->buffers, cfg->buffer_size, max_sessions);
	return 0;

err_bufs:
	free(w->sessions);
	free(w->waitq);
	w->sessions = NULL;
	w->waitq = NULL;
	bufring_destroy(&w->bufs, &w->loop);
err_loop:
	loop_exit(&w->loop);
	close(w->notify_fd);
	w->notify_fd = -1;
	return rc;
}

void worker_destroy(struct worker *w)
{
	for (int i = 0; i < w->nlisteners; i++) {
		if (w->listeners[i].fd >= 0)
			close(w->listeners[i].fd);
		w->listeners[i].fd = -1;
	}
	if (w->sigfd >= 0)
		close(w->sigfd);
	if (w->notify_fd >= 0)
		close(w->notify_fd);
	w->sigfd = w->notify_fd = -1;
	bufring_destroy(&w->bufs, &w->loop);
	loop_exit(&w->loop);
	free(w->sessions);
	free(w->waitq);
	w->sessions = NULL;
	w->waitq = NULL;
}

/* ---- sessions ---- */

static struct session *session_alloc(struct worker *w)
{
	struct session *s;

	if (w->free_head == UINT32_MAX)
		return NULL;
	s = &w->sessions[w->free_head];
	w->free_head = s->next_free;
	w->active++;
	return s;
}

void worker_release(struct worker *w, struct session *s)
{
	w->st.closed[s->reason]++;
	s->gen = (s->gen + 1) & TAG_GEN_MASK;
	s->next_free = w->free_head;
	w->free_head = worker_slot(w, s);
	w->active--;
}

void worker_wait_buffers(struct worker *w, struct session *s, unsigned int d)
{
	/* Each direction is queued at most once (DIR_WAIT_BUF), so 2 per slot always fits. */
	uint32_t at = (w->wq_head + w->wq_len) % w->wq_cap;

	w->waitq[at] = tag_make(worker_slot(w, s), s->gen, d, OP_RECV);
	w->wq_len++;
}

/* Re-arms parked recvs, at most one per free buffer, so an empty ring never spins. */
static void resume_waiters(struct worker *w)
{
	uint32_t budget = bufring_available(&w->bufs);

	while (w->wq_len > 0 && budget > 0) {
		uint64_t t = w->waitq[w->wq_head];
		struct session *s = &w->sessions[tag_slot(t)];

		w->wq_head = (w->wq_head + 1) % w->wq_cap;
		w->wq_len--;
		if (s->gen != tag_gen(t) || s->state == SS_FREE)
			continue;
		session_resume_recv(w, s, tag_side(t));
		budget--;
	}
}

/* ---- accepting ---- */

/* Tag sides of worker-level requests on a listener. */
enum { ACC_MULTI = 0, ACC_SINGLE = 1 };
enum { CW_MULTI = 0, CW_SINGLE = 1, CW_TIMER = 2, CW_STOP_CANCEL = 4, CW_STOP_CLOSE = 5 };

static void accept_cancel(struct worker *w, int i, unsigned int kind)
{
	loop_cancel(&w->loop, tag_make((uint32_t)i, 0, kind, OP_ACCEPT),
		    tag_make((uint32_t)i, 0, kind == ACC_MULTI ? CW_MULTI : CW_SINGLE, OP_CANCEL_W));
	if (kind == ACC_MULTI)
		w->listeners[i].cancel_multi = true;
	else
		w->listeners[i].cancel_single = true;
	w->misc_inflight++;
}

/* Brings every listener to the wanted state. Far from --max-conns a multishot accept takes
 * connections as fast as they come; a burst can never exceed the listen backlog, so once fewer
 * than WORKER_MULTISHOT_MIN_FREE slots are free, single-shot accepts (one per listener, never
 * more than free slots) take over and no accepted client ever has to be turned away. */
static void accept_update(struct worker *w)
{
	bool want = !w->stopping && !w->accept_backoff;
	uint32_t used = w->active + w->singles;
	uint32_t free = w->max_sessions > used ? w->max_sessions - used : 0;

	for (int i = 0; i < w->nlisteners; i++) {
		struct listener *l = &w->listeners[i];

		if (!want) {
			if (w->stopping)
				continue; /* stop() cancels everything on the fd */
			if (l->multi_armed && !l->cancel_multi)
				accept_cancel(w, i, ACC_MULTI);
			if (l->single_armed && !l->cancel_single)
				accept_cancel(w, i, ACC_SINGLE);
			continue;
		}
		if (free >= WORKER_MULTISHOT_MIN_FREE) {
			if (!l->multi_armed && !l->single_armed) {
				loop_accept_multishot(&w->loop, l->fd,
						      tag_make((uint32_t)i, 0, ACC_MULTI, OP_ACCEPT));
				l->multi_armed = true;
				w->misc_inflight++;
			}
			continue;
		}
		if (l->multi_armed) {
			if (!l->cancel_multi)
				accept_cancel(w, i, ACC_MULTI);
			continue;
		}
		if (!l->single_armed && free > 0) {
			loop_accept(&w->loop, l->fd, tag_make((uint32_t)i, 0, ACC_SINGLE, OP_ACCEPT));
			l->single_armed = true;
			w->singles++;
			w->misc_inflight++;
			free--;
		}
	}
}

void worker_accept_backoff(struct worker *w)
{
	if (w->accept_backoff)
		return;
	w->accept_backoff = true;
	w->st.accept_backoffs++;
	w->backoff_ts.tv_sec = 0;
	w->backoff_ts.tv_nsec = WORKER_ACCEPT_BACKOFF_MS * 1000000LL;
	loop_timeout(&w->loop, &w->backoff_ts, tag_make(0, 0, TIMER_ACCEPT_BACKOFF, OP_TIMER));
	w->misc_inflight++;
}

static void on_accept(struct worker *w, const struct io_uring_cqe *cqe)
{
	struct listener *l = &w->listeners[tag_slot(cqe->user_data)];
	unsigned long suppressed;
	int res = cqe->res;

	if (tag_side(cqe->user_data) == ACC_SINGLE) {
		l->single_armed = false;
		w->singles--;
		w->misc_inflight--;
	} else if (!(cqe->flags & IORING_CQE_F_MORE)) {
		l->multi_armed = false;
		w->misc_inflight--;
	}
	if (res >= 0) {
		struct session *s = w->stopping ? NULL : session_alloc(w);

		if (s == NULL) {
			/* While stopping; or a multishot burst larger than the listen backlog,
			 * which accept_update's margin makes impossible in practice. */
			close(res);
			w->st.accept_overflow++;
			return;
		}
		w->st.accepted++;
		session_start(w, s, res);
		return;
	}
	if (res == -ECANCELED)
		return;
	w->st.accept_errors++;
	if (res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS) {
		if (log_enabled(LOG_WARN) && log_ratelimit_ok(&w->rl_accept, &suppressed))
			log_warn("accept on %s failed: %s; pausing accepts for %d ms (%lu similar "
				 "messages suppressed)",
				 addr_format(&l->addr, (char[ADDR_STRLEN]){ 0 }, ADDR_STRLEN),
				 strerror(-res), WORKER_ACCEPT_BACKOFF_MS, suppressed);
		worker_accept_backoff(w);
		return;
	}
	/* ECONNABORTED and friends concern one connection only: accept_update re-arms. */
	log_debug("accept failed: %s", strerror(-res));
}

/* ---- stopping ---- */

/* Worker 0 passes a stop signal on to the others through their eventfds. */
static void notify_peers(struct worker *w)
{
	static const uint64_t one = 1;

	for (int i = 0; i < w->npeers; i++) {
		if (&w->peers[i] != w && write(w->peers[i].notify_fd, &one, sizeof(one)) < 0)
			log_error("cannot pass the stop on to worker %d: %s", i, strerror(errno));
	}
}

static void stop(struct worker *w, int signo)
{
	if (w->peers != NULL && w->sigfd >= 0)
		notify_peers(w);
	if (w->stopping) {
		if (w->sigfd >= 0)
			log_warn("second %s: exiting now", strsignal(signo));
		w->stop_deadline_hit = true;
		return;
	}
	if (w->sigfd >= 0)
		log_info("received %s: closing connections and exiting", strsignal(signo));
	log_debug("worker %d: stopping, %u connections to close", w->id, w->active);
	w->stopping = true;
	for (int i = 0; i < w->nlisteners; i++) {
		struct listener *l = &w->listeners[i];

		/* Cancels the multishot accept and closes the listener in one hard-linked pair:
		 * new clients get refused at once. */
		loop_cancel_fd_then_close(&w->loop, l->fd,
					  tag_make((uint32_t)i, 0, CW_STOP_CANCEL, OP_CANCEL_W),
					  tag_make((uint32_t)i, 0, CW_STOP_CLOSE, OP_CANCEL_W));
		w->misc_inflight += 2;
		l->fd = -1;
	}
	if (w->accept_backoff) {
		loop_cancel(&w->loop, tag_make(0, 0, TIMER_ACCEPT_BACKOFF, OP_TIMER),
			    tag_make(0, 0, CW_TIMER, OP_CANCEL_W));
		w->misc_inflight++;
	}
	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->sessions[i];

		if (s->state != SS_FREE && s->state != SS_CLOSING)
			session_abort(w, s, CLOSE_SHUTDOWN);
	}
	w->deadline_ts.tv_sec = WORKER_STOP_DEADLINE_MS / 1000;
	w->deadline_ts.tv_nsec = (WORKER_STOP_DEADLINE_MS % 1000) * 1000000LL;
	loop_timeout(&w->loop, &w->deadline_ts, tag_make(0, 0, TIMER_STOP_DEADLINE, OP_TIMER));
}

static void signal_arm(struct worker *w)
{
	if (w->sigfd >= 0)
		loop_read(&w->loop, w->sigfd, &w->siginfo, sizeof(w->siginfo),
			  tag_make(0, 0, 0, OP_SIGNAL));
	else
		loop_read(&w->loop, w->notify_fd, &w->notify_val, sizeof(w->notify_val),
			  tag_make(0, 0, 0, OP_NOTIFY));
}

/* ---- dispatch ---- */

static void dispatch(void *ctx, const struct io_uring_cqe *cqe)
{
	struct worker *w = ctx;
	uint64_t tag = cqe->user_data;
	enum loop_op op = tag_op(tag);

	switch (op) {
	case OP_ACCEPT:
		on_accept(w, cqe);
		return;
	case OP_SIGNAL:
		if (cqe->res == (int)sizeof(w->siginfo))
			stop(w, (int)w->siginfo.ssi_signo);
		if (!w->stop_deadline_hit)
			signal_arm(w);
		return;
	case OP_NOTIFY:
		if (cqe->res == (int)sizeof(w->notify_val))
			stop(w, SIGTERM);
		if (!w->stop_deadline_hit)
			signal_arm(w);
		return;
	case OP_TIMER:
		if (tag_side(tag) == TIMER_ACCEPT_BACKOFF) {
			w->misc_inflight--;
			w->accept_backoff = false;
		} else if (cqe->res == -ETIME) {
			w->stop_deadline_hit = true;
		}
		return;
	case OP_CANCEL_W:
		w->misc_inflight--;
		if (tag_side(tag) == CW_MULTI)
			w->listeners[tag_slot(tag)].cancel_multi = false;
		else if (tag_side(tag) == CW_SINGLE)
			w->listeners[tag_slot(tag)].cancel_single = false;
		return;
	default:
		break;
	}
	if (op <= OP_CANCEL_W || op >= OP__COUNT || tag_slot(tag) >= w->max_sessions) {
		log_error("completion with an unknown tag 0x%llx", (unsigned long long)tag);
		abort();
	}
	struct session *s = &w->sessions[tag_slot(tag)];

	if (s->gen != tag_gen(tag) || s->state == SS_FREE) {
		/* Cannot happen while slots are freed only with nothing in flight; counted and
		 * dropped, never applied to the slot's new tenant. A buffer it carries goes back. */
		w->st.stale_cqes++;
		if (cqe->flags & IORING_CQE_F_BUFFER) {
			uint32_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

			bufring_took(&w->bufs, bid, 0);
			bufring_put(&w->bufs, bid);
		}
		return;
	}
	session_handle(w, s, cqe);
}

int worker_run(struct worker *w)
{
	int status = 0;

	signal_arm(w);
	accept_update(w);
	while (!(w->stopping && w->active == 0 && w->misc_inflight == 0)) {
		int rc = loop_run_once(&w->loop, dispatch, w);

		if (rc < 0) {
			log_error("io_uring_enter failed: %s", strerror(-rc));
			status = 1;
			break;
		}
		bufring_commit(&w->bufs);
		if (w->wq_len > 0)
			resume_waiters(w);
		accept_update(w);
		if (w->stop_deadline_hit) {
			if (w->active > 0 || w->misc_inflight > 0)
				log_warn("exiting with %u connections still closing", w->active);
			break;
		}
	}
	/* Publish what the last batch recycled before the ring goes away. */
	bufring_commit(&w->bufs);
	stats_log_summary(&w->st, &w->loop.st, w->id);
	return status;
}
