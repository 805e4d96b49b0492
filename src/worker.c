/* worker: one ring, its listeners, its session slab and its signalfd. Dispatches each CQE by
 * tag to the session or worker handler, pauses and resumes accepting, and stops cleanly.
 * Must never make a syscall per forwarded byte; everything on the data path is an SQE. */
#include "uproxy/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "uproxy/util.h"

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
	/* Accepted sockets inherit these from the listener: no per-connection syscall. */
	sock_set_forwarding(fd);
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

int worker_adopt(const int *fds, int n, bool original, struct listener *out, char *why,
		 size_t whylen)
{
	for (int i = 0; i < n; i++) {
		struct listener *l = &out[i];

		memset(l, 0, sizeof(*l));
		l->fd = original ? fds[i] : fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
		if (l->fd < 0) {
			snprintf(why, whylen, "cannot duplicate inherited socket %d: %s", fds[i],
				 strerror(errno));
			while (i-- > 0)
				if (!original)
					close(out[i].fd);
			return -1;
		}
		sock_set_forwarding(l->fd);
		l->addr.len = sizeof(l->addr.u);
		if (getsockname(l->fd, &l->addr.u.sa, &l->addr.len) < 0)
			memset(&l->addr, 0, sizeof(l->addr));
	}
	return n;
}

/* ---- set-up ---- */

/* The per-upstream metrics table is republished at most this often while it changes. */
#define STATS_BACKENDS_EVERY_MS 10

/* Applies a new membership to the pool and refreshes the per-id address table. */
static int pool_apply(struct worker *w, const struct backend_spec *specs, int n)
{
	int rc = backend_pool_update(w->pool, specs, n);

	if (rc < 0)
		return rc;
	for (uint32_t id = 0; id < backend_slots(w->pool); id++) {
		struct backend_info bi;

		if (backend_info(w->pool, id, &bi) < 0)
			continue;
		/* A reused id names another upstream: results still in flight for the old one
		 * (health probes) carry the old generation and are ignored. */
		if (!addr_equal(&w->baddr[id], &bi.addr))
			w->bgen[id] = (w->bgen[id] + 1) & TAG_GEN_MASK;
		w->baddr[id] = bi.addr;
	}
	return 0;
}

/* The per-slot arrays worker_init allocates after the rings. */
static void free_slot_arrays(struct worker *w)
{
	free(w->pre);
	free(w->alog);
	free(w->peer_addrs);
	free(w->sessions);
	w->pre = NULL;
	w->alog = NULL;
	w->peer_addrs = NULL;
	w->sessions = NULL;
}

/* An environment switch set to "0": a feature forced off (for tests and comparisons). */
static bool env_off(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && strcmp(v, "0") == 0;
}

int worker_init(struct worker *w, const struct config *cfg, const struct backend_spec *specs,
		int nspecs, uint32_t max_sessions, char *why, size_t whylen)
{
	struct backend_opts bo;
	unsigned int cq;
	int rc;

	w->cfg = cfg;
	w->max_sessions = max_sessions;
	w->now_ms = monotonic_ms();
	backend_opts_defaults(&bo);
	bo.balance = cfg->balance;
	bo.fail_threshold = cfg->fail_threshold;
	bo.fail_timeout_ms = cfg->fail_timeout_s * 1000;
	bo.seed = (uint64_t)w->now_ms * 2654435761u + (uint64_t)w->id;
	w->baddr = calloc(BACKEND_MAX, sizeof(*w->baddr));
	w->probes = calloc(BACKEND_MAX, sizeof(*w->probes));
	w->bgen = calloc(BACKEND_MAX, sizeof(*w->bgen));
	if (w->baddr == NULL || w->probes == NULL || w->bgen == NULL || backend_pool_new(&bo, &w->pool) < 0 ||
	    timer_wheel_new(w->now_ms, &w->wheel) < 0) {
		snprintf(why, whylen, "out of memory setting up worker %d", w->id);
		return -ENOMEM;
	}
	rc = pool_apply(w, specs, nspecs);
	if (rc < 0) {
		snprintf(why, whylen, "bad upstream list: %s", strerror(-rc));
		return rc;
	}
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
	rc = loop_new(cfg->backend, WORKER_SQ_ENTRIES, cq, &w->loop, why, whylen);
	if (rc < 0)
		return rc;
	rc = loop_probe(w->loop, why, whylen);
	if (rc < 0)
		goto err_loop;
	w->recv_bundle = loop_has_recv_bundle(w->loop) && !env_off("UPROXY_RECV_BUNDLE");
	/* Two fallback ids per session: one per direction at most. */
	rc = bufring_init(&w->bufs, w->loop, 0, cfg->buffers, cfg->buffer_size, 2 * max_sessions,
			  why, whylen);
	if (rc < 0)
		goto err_loop;
	if (w->alog_fd >= 0) {
		w->alog = calloc(1, sizeof(*w->alog));
		if (w->alog == NULL) {
			snprintf(why, whylen, "cannot allocate the access-log buffers");
			rc = -ENOMEM;
			goto err_bufs;
		}
		w->alog->fd = w->alog_fd;
		w->alog->json = cfg->log_json;
		w->alog->dropped = &w->st.log_dropped;
	}
	if (cfg->send_proxy || cfg->accept_proxy) {
		w->pre = calloc(max_sessions, sizeof(*w->pre));
		if (w->pre == NULL) {
			snprintf(why, whylen, "cannot allocate PROXY protocol buffers");
			rc = -ENOMEM;
			goto err_bufs;
		}
	}
	if (w->alog != NULL || cfg->balance == BALANCE_HASH || w->pre != NULL) {
		w->peer_addrs = calloc(max_sessions, sizeof(*w->peer_addrs));
		if (w->peer_addrs == NULL) {
			snprintf(why, whylen, "cannot allocate %u client address slots", max_sessions);
			rc = -ENOMEM;
			goto err_bufs;
		}
	}
	/* calloc'd slab: pages are touched only as slots are first used. */
	w->sessions = calloc(max_sessions, sizeof(*w->sessions));
	if (w->sessions == NULL) {
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
	}
	{
		char desc[160];

		loop_describe(w->loop, desc, sizeof(desc));
		log_debug("worker %d: %s recv_bundle=%d, %u buffers of %u bytes, %u session slots",
			  w->id, desc, w->recv_bundle, cfg->buffers, cfg->buffer_size,
			  max_sessions);
	}
	return 0;

err_bufs:
	free_slot_arrays(w);
	loop_free(w->loop);
	bufring_destroy(&w->bufs);
	goto err_notify;
err_loop:
	loop_free(w->loop);
err_notify:
	w->loop = NULL;
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
	for (uint32_t id = 0; w->probes != NULL && id < BACKEND_MAX; id++) {
		if (w->probes[id].busy && w->probes[id].fd >= 0)
			close(w->probes[id].fd);
	}
	httpstats_destroy(&w->hs);
	/* The ring first: its teardown ends every send that may still read a buffer. */
	loop_free(w->loop);
	w->loop = NULL;
	bufring_destroy(&w->bufs);
	free_slot_arrays(w);
	backend_pool_free(w->pool);
	w->pool = NULL;
	timer_wheel_free(w->wheel);
	w->wheel = NULL;
	free(w->baddr);
	free(w->probes);
	free(w->bgen);
	w->baddr = NULL;
	w->probes = NULL;
	w->bgen = NULL;
	free(w->mbox.specs);
	w->mbox.specs = NULL;
}

void worker_publish_stats(struct worker *w, bool backends)
{
	static __thread struct stats_backend table[BACKEND_MAX];
	uint32_t n = 0;

	if (w->snap == NULL)
		return;
	if (backends) {
		for (uint32_t id = 0; id < backend_slots(w->pool); id++) {
			struct backend_info bi;

			if (backend_info(w->pool, id, &bi) < 0 || bi.removed)
				continue;
			table[n].addr = bi.addr;
			table[n].active = bi.active;
			table[n].up = bi.up;
			n++;
		}
		w->backends_published_ms = w->now_ms;
		w->backends_dirty = false;
	}
	stats_publish(w->snap, w->active, &w->st, loop_stats(w->loop), backends ? table : NULL,
		      n);
}

void worker_backend_report(struct worker *w, uint32_t id, bool ok)
{
	char buf[ADDR_STRLEN];

	w->backends_dirty = true;
	if (backend_report(w->pool, id, ok, w->now_ms))
		log_warn("worker %d: upstream %s is %s", w->id,
			 addr_format(&w->baddr[id], buf, sizeof(buf)),
			 ok ? "up again" : "down (connects keep failing)");
}

/* ---- sessions ---- */

static struct session *session_alloc(struct worker *w)
{
	struct session *s;

	if (w->free_head == UINT32_MAX)
		return NULL;
	s = &w->sessions[w->free_head];
	w->free_head = s->next_free;
	/* Relaxed atomic stores: the control thread reads the count for sd_notify STATUS=. */
	__atomic_store_n(&w->active, w->active + 1, __ATOMIC_RELAXED);
	return s;
}

void worker_release(struct worker *w, struct session *s)
{
	w->st.closed[s->reason]++;
	s->gen = (s->gen + 1) & TAG_GEN_MASK;
	s->next_free = w->free_head;
	w->free_head = worker_slot(w, s);
	__atomic_store_n(&w->active, w->active - 1, __ATOMIC_RELAXED);
}

/* ---- accepting ---- */

/* Tag sides of worker-level requests on a listener. */
enum { ACC_MULTI = 0, ACC_SINGLE = 1 };
enum { CW_MULTI = 0, CW_SINGLE = 1, CW_TIMER = 2, CW_STOP_CANCEL = 4, CW_STOP_CLOSE = 5 };

static void accept_cancel(struct worker *w, int i, unsigned int kind)
{
	loop_cancel(w->loop, tag_make((uint32_t)i, 0, kind, OP_ACCEPT),
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
				loop_accept_multishot(w->loop, l->fd,
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
			loop_accept(w->loop, l->fd, tag_make((uint32_t)i, 0, ACC_SINGLE, OP_ACCEPT));
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
	loop_timeout(w->loop, WORKER_ACCEPT_BACKOFF_MS, tag_make(0, 0, TIMER_ACCEPT_BACKOFF, OP_TIMER));
	w->misc_inflight++;
}

static void on_accept(struct worker *w, const struct loop_cqe *c)
{
	struct listener *l = &w->listeners[tag_slot(c->tag)];
	unsigned long suppressed;
	int res = c->res;

	if (tag_side(c->tag) == ACC_SINGLE) {
		l->single_armed = false;
		w->singles--;
		w->misc_inflight--;
	} else if (!(c->flags & LOOP_CQE_MORE)) {
		l->multi_armed = false;
		w->misc_inflight--;
	}
	if (res >= 0) {
		struct session *s;

		if (loop_fault_session_start(w->loop)) {
			/* Fault injection only: session set-up "ran out of memory"; RST. */
			sock_linger_rst(res);
			close(res);
			w->st.accept_overflow++;
			return;
		}
		s = w->stopping ? NULL : session_alloc(w);

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

/* ---- mailbox (control thread -> worker) ---- */

void worker_mailbox_init(struct worker *w)
{
	pthread_mutex_init(&w->mbox.mu, NULL);
}

static void mailbox_ring(struct worker *w)
{
	static const uint64_t one = 1;

	if (write(w->notify_fd, &one, sizeof(one)) < 0)
		log_error("cannot notify worker %d: %s", w->id, strerror(errno));
}

void worker_post_stop(struct worker *w)
{
	pthread_mutex_lock(&w->mbox.mu);
	w->mbox.stops++;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
}

void worker_post_abort(struct worker *w)
{
	pthread_mutex_lock(&w->mbox.mu);
	w->mbox.abort = true;
	w->mbox.stops++;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
}

int worker_post_pool(struct worker *w, const struct backend_spec *specs, int n)
{
	struct backend_spec *copy = malloc((size_t)(n > 0 ? n : 1) * sizeof(*copy));

	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, specs, (size_t)n * sizeof(*copy));
	pthread_mutex_lock(&w->mbox.mu);
	free(w->mbox.specs);
	w->mbox.specs = copy;
	w->mbox.nspecs = n;
	w->mbox.update = true;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
	return 0;
}

/* ---- stopping ---- */

/* Tells every open session to close now (after the drain, or on a second signal). */
static void close_all(struct worker *w)
{
	if (w->closing_all)
		return;
	w->closing_all = true;
	if (w->active > 0)
		log_info("worker %d: closing %u connections still open", w->id, w->active);
	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->sessions[i];

		if (s->state != SS_FREE && s->state != SS_CLOSING)
			session_abort(w, s, CLOSE_SHUTDOWN);
	}
	loop_timeout(w->loop, WORKER_STOP_DEADLINE_MS, tag_make(0, 0, TIMER_STOP_DEADLINE, OP_TIMER));
}

static void stop(struct worker *w, int signo)
{
	if (w->sigfd >= 0) {
		for (int i = 0; i < w->npeers; i++)
			if (&w->peers[i] != w)
				worker_post_stop(&w->peers[i]);
	}
	if (w->stopping) {
		if (w->sigfd >= 0)
			log_warn("second %s: closing every connection now", strsignal(signo));
		close_all(w);
		return;
	}
	if (w->sigfd >= 0) {
		log_info("received %s: no longer accepting; draining connections for up to %u ms",
			 strsignal(signo), w->cfg->drain_timeout_ms);
		if (w->notify != NULL)
			sdnotify_stopping(w->notify);
	}
	w->stopping = true;
	httpstats_stop(w);
	for (int i = 0; i < w->nlisteners; i++) {
		struct listener *l = &w->listeners[i];

		/* Cancels the accept and closes the listener in one hard-linked pair. */
		loop_cancel_fd_then_close(w->loop, l->fd,
					  tag_make((uint32_t)i, 0, CW_STOP_CANCEL, OP_CANCEL_W),
					  tag_make((uint32_t)i, 0, CW_STOP_CLOSE, OP_CANCEL_W));
		w->misc_inflight += 2;
		l->fd = -1;
	}
	if (w->accept_backoff) {
		loop_cancel(w->loop, tag_make(0, 0, TIMER_ACCEPT_BACKOFF, OP_TIMER),
			    tag_make(0, 0, CW_TIMER, OP_CANCEL_W));
		w->misc_inflight++;
	}
	if (w->cfg->drain_timeout_ms == 0) {
		close_all(w);
		return;
	}
	/* Sessions finish on their own; whatever is left when this fires is closed. The timer
	 * is not counted in flight: the worker exits as soon as the last session is gone. */
	loop_timeout(w->loop, w->cfg->drain_timeout_ms, tag_make(0, 0, TIMER_DRAIN, OP_TIMER));
}

static void on_notify(struct worker *w)
{
	struct backend_spec *specs = NULL;
	unsigned int stops;
	int n = 0;
	bool update, abort_now;

	pthread_mutex_lock(&w->mbox.mu);
	stops = w->mbox.stops;
	abort_now = w->mbox.abort;
	update = w->mbox.update;
	if (update) {
		specs = w->mbox.specs;
		n = w->mbox.nspecs;
		w->mbox.specs = NULL;
		w->mbox.update = false;
	}
	pthread_mutex_unlock(&w->mbox.mu);
	if (update) {
		int rc = pool_apply(w, specs, n);

		w->backends_dirty = true;
		if (rc < 0)
			log_error("worker %d: upstream pool update refused: %s", w->id,
				  strerror(-rc));
		else
			log_debug("worker %d: upstream pool now has %u members", w->id,
				  backend_count(w->pool));
		free(specs);
	}
	while (w->stops_seen < stops) {
		w->stops_seen++;
		stop(w, SIGTERM);
	}
	if (abort_now)
		close_all(w);
}

/* ---- active health checks ---- */

enum { PROBE_SOCKET = 0, PROBE_CONNECT = 1, PROBE_TIMEOUT = 2, PROBE_CLOSE = 3 };

static void health_arm(struct worker *w)
{
	loop_timeout(w->loop, w->cfg->health_interval_ms, tag_make(0, 0, TIMER_HEALTH, OP_TIMER));
}

/* Starts a TCP connect probe to every member without one in flight. */
static void health_round(struct worker *w)
{
	for (uint32_t id = 0; id < backend_slots(w->pool); id++) {
		struct backend_info bi;

		if (w->probes[id].busy || backend_info(w->pool, id, &bi) < 0 || bi.removed)
			continue;
		w->probes[id].busy = true;
		w->probes[id].fd = -1;
		loop_socket(w->loop, bi.addr.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC,
			    IPPROTO_TCP, tag_make(id, w->bgen[id], PROBE_SOCKET, OP_PROBE));
	}
}

static void on_probe(struct worker *w, const struct loop_cqe *c)
{
	uint32_t id = tag_slot(c->tag), gen = tag_gen(c->tag);
	struct probe *p = &w->probes[id];
	/* The probe was started for the upstream this id named then: if SIGHUP or re-resolution
	 * gave the id to another address since, its result says nothing about the new one. */
	bool current = gen == w->bgen[id];
	struct backend_info bi;
	char buf[ADDR_STRLEN];
	int res = c->res;

	switch (tag_side(c->tag)) {
	case PROBE_SOCKET:
		if (res < 0) {
			p->busy = false;
			return;
		}
		p->fd = res;
		if (w->stopping || !current || backend_info(w->pool, id, &bi) < 0 || bi.removed) {
			loop_close(w->loop, p->fd, tag_make(id, gen, PROBE_CLOSE, OP_PROBE));
			p->fd = -1;
			return;
		}
		loop_connect_timeout(w->loop, p->fd, &w->baddr[id].u.sa, w->baddr[id].len,
				     w->cfg->connect_timeout_ms,
				     tag_make(id, gen, PROBE_CONNECT, OP_PROBE),
				     tag_make(id, gen, PROBE_TIMEOUT, OP_PROBE));
		return;
	case PROBE_CONNECT:
		w->backends_dirty = true;
		if (current && backend_info(w->pool, id, &bi) == 0 && !bi.removed &&
		    backend_set_up(w->pool, id, res == 0))
			log_warn("worker %d: health check: upstream %s is %s%s%s", w->id,
				 addr_format(&w->baddr[id], buf, sizeof(buf)),
				 res == 0 ? "up" : "down (", res == 0 ? "" : strerror(res == -ECANCELED ? ETIMEDOUT : -res),
				 res == 0 ? "" : ")");
		loop_close(w->loop, p->fd, tag_make(id, gen, PROBE_CLOSE, OP_PROBE));
		p->fd = -1;
		return;
	case PROBE_CLOSE:
		p->busy = false;
		return;
	default: /* PROBE_TIMEOUT */
		return;
	}
}

static void signal_arm(struct worker *w)
{
	loop_read(w->loop, w->sigfd, &w->siginfo, sizeof(w->siginfo),
		  tag_make(0, 0, 0, OP_SIGNAL));
}

static void notify_arm(struct worker *w)
{
	loop_read(w->loop, w->notify_fd, &w->notify_val, sizeof(w->notify_val),
		  tag_make(0, 0, 0, OP_NOTIFY));
}

/* ---- dispatch ---- */

static void dispatch(void *ctx, const struct loop_cqe *c)
{
	struct worker *w = ctx;
	uint64_t tag = c->tag;
	enum loop_op op = tag_op(tag);

	/* The first completion after a wait reads the clock: now_ms must not be the time before
	 * an idle wait (session start times and deadlines are taken from it). */
	if (w->clock_stale) {
		w->now_ms = monotonic_ms();
		w->clock_stale = false;
	}

	switch (op) {
	case OP_ACCEPT:
		on_accept(w, c);
		return;
	case OP_SIGNAL:
		if (c->res == (int)sizeof(w->siginfo))
			stop(w, (int)w->siginfo.ssi_signo);
		if (!w->stop_deadline_hit)
			signal_arm(w);
		return;
	case OP_NOTIFY:
		on_notify(w);
		if (!w->stop_deadline_hit)
			notify_arm(w);
		return;
	case OP_PROBE:
		on_probe(w, c);
		return;
	case OP_STATS:
		httpstats_handle(w, c);
		return;
	case OP_LOG:
		w->misc_inflight--;
		w->log_writing = false;
		accesslog_done(w->alog, c->res);
		return;
	case OP_TIMER:
		if (tag_side(tag) == TIMER_ACCEPT_BACKOFF) {
			w->misc_inflight--;
			w->accept_backoff = false;
		} else if (tag_side(tag) == TIMER_DRAIN) {
			close_all(w);
		} else if (tag_side(tag) == TIMER_HEALTH) {
			if (!w->stopping) {
				health_round(w);
				health_arm(w);
			}
		} else if (c->res == -ETIME) {
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
		if (c->flags & LOOP_CQE_BUFFER) {
			uint32_t bid = c->bid;

			bufring_took(&w->bufs, bid, 0);
			bufring_put(&w->bufs, bid);
		}
		return;
	}
	session_handle(w, s, c);
}

/* Starts the next access-log write if none is in flight (one per worker at a time). */
static void log_flush(struct worker *w)
{
	unsigned int n;
	const char *p;

	if (w->log_writing)
		return;
	p = accesslog_next(w->alog, &n);
	if (p == NULL)
		return;
	loop_write(w->loop, w->alog->fd, p, n, tag_make(0, 0, 0, OP_LOG));
	w->log_writing = true;
	w->misc_inflight++;
}

static void on_timer(struct timer_node *n, void *ctx)
{
	struct worker *w = ctx;

	session_timeout(w, &w->sessions[n->data]);
}

/* The ring failed for good: nothing more can be submitted. Every session is reset at once
 * with plain syscalls (its bytes cannot be forwarded any more: never a clean FIN), the other
 * workers are told to close theirs, and the process exits non-zero so that a supervisor
 * restarts it, instead of living on with one dead worker. */
static void fail_fatal(struct worker *w, int rc)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->sessions[i];

		if (s->state == SS_FREE)
			continue;
		n++;
		for (unsigned int side = 0; side < 2; side++) {
			if (s->fd[side] < 0)
				continue;
			sock_linger_rst(s->fd[side]);
			close(s->fd[side]);
			s->fd[side] = -1;
		}
	}
	log_error("worker %d: %s failed: %s; reset its %u connection(s); uproxy exits", w->id,
		  loop_backend_name(w->loop), strerror(-rc), n);
	for (int i = 0; i < w->npeers; i++)
		if (&w->peers[i] != w)
			worker_post_abort(&w->peers[i]);
	w->stopping = true;
}

int worker_run(struct worker *w)
{
	int status = 0;

	if (w->sigfd >= 0)
		signal_arm(w);
	notify_arm(w);
	if (w->cfg->health_interval_ms > 0) {
		health_round(w);
		health_arm(w);
	}
	accept_update(w);
	if (w->hs.nfds > 0)
		httpstats_start(w);
	while (!(w->stopping && w->active == 0 && w->misc_inflight == 0)) {
		int64_t wait = timer_next_ms(w->wheel, w->now_ms);
		int rc;

		if (w->snap != NULL && w->backends_dirty &&
		    (wait < 0 || wait > STATS_BACKENDS_EVERY_MS))
			wait = STATS_BACKENDS_EVERY_MS;
		w->clock_stale = true;
		rc = loop_run_once(w->loop, dispatch, w, wait);

		if (rc < 0) {
			fail_fatal(w, rc);
			status = 1;
			break;
		}
		w->now_ms = monotonic_ms();
		if (timer_count(w->wheel) > 0)
			timer_advance(w->wheel, w->now_ms, on_timer, w);
		bufring_commit(&w->bufs, w->now_ms);
		accept_update(w);
		if (w->alog != NULL)
			log_flush(w);
		/* Counters every iteration (a few hundred bytes); the per-upstream table when it
		 * changed, at most every STATS_BACKENDS_EVERY_MS (the wait above wakes for it). */
		if (w->snap != NULL)
			worker_publish_stats(w, w->backends_dirty &&
						       w->now_ms - w->backends_published_ms >=
							       STATS_BACKENDS_EVERY_MS);
		if (w->stop_deadline_hit) {
			if (w->active > 0 || w->misc_inflight > 0)
				log_warn("exiting with %u connections still closing", w->active);
			break;
		}
	}
	/* Publish what the last batch recycled before the ring goes away. */
	bufring_commit(&w->bufs, w->now_ms);
	if (w->alog != NULL && !w->log_writing)
		accesslog_drain(w->alog);
	stats_log_summary(&w->st, loop_stats(w->loop), w->id);
	return status;
}
