/* worker: one thread's loop: sets it up, runs it, dispatches each completion by tag (to the
 * session, accept, health, mailbox or metrics handler), and stops cleanly (drain, deadline,
 * fatal error). Must never make a syscall per forwarded byte; the data path is the loop's. */
#include "worker_impl.h"

#include <errno.h>
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

/* ---- set-up ---- */

/* The per-upstream metrics table is republished at most this often while it changes. */
#define STATS_BACKENDS_EVERY_MS 10

/* Applies a new membership to the pool and refreshes the per-id address table. */
int worker_pool_apply(struct worker *w, const struct backend_spec *specs, int n)
{
	int rc = backend_pool_update(w->env.pool, specs, n);

	if (rc < 0)
		return rc;
	for (uint32_t id = 0; id < backend_slots(w->env.pool); id++) {
		struct backend_info bi;

		if (backend_info(w->env.pool, id, &bi) < 0)
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
	free(w->env.pre);
	free(w->env.alog);
	free(w->env.peer_addrs);
	free(w->env.slab);
	w->env.pre = NULL;
	w->env.alog = NULL;
	w->env.peer_addrs = NULL;
	w->env.slab = NULL;
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

	w->env.cfg = cfg;
	w->env.bufs = &w->bufs;
	w->env.st = &w->st;
	w->env.worker_id = w->id;
	w->max_sessions = max_sessions;
	w->env.now_ms = monotonic_ms();
	backend_opts_defaults(&bo);
	bo.balance = cfg->balance;
	bo.fail_threshold = cfg->fail_threshold;
	bo.fail_timeout_ms = cfg->fail_timeout_s * 1000;
	bo.seed = (uint64_t)w->env.now_ms * 2654435761u + (uint64_t)w->id;
	w->baddr = calloc(BACKEND_MAX, sizeof(*w->baddr));
	w->env.baddr = w->baddr;
	w->probes = calloc(BACKEND_MAX, sizeof(*w->probes));
	w->bgen = calloc(BACKEND_MAX, sizeof(*w->bgen));
	if (w->baddr == NULL || w->probes == NULL || w->bgen == NULL ||
	    backend_pool_new(&bo, &w->env.pool) < 0 ||
	    timer_wheel_new(w->env.now_ms, &w->env.wheel) < 0) {
		snprintf(why, whylen, "out of memory setting up worker %d", w->id);
		return -ENOMEM;
	}
	for (int k = 1; k < TIMER__COUNT; k++)
		timer_node_init(&w->timers[k], (uint16_t)k, 0);
	rc = worker_pool_apply(w, specs, nspecs);
	if (rc < 0) {
		snprintf(why, whylen, "bad upstream list: %s", strerror(-rc));
		return rc;
	}
	w->notify_fd = eventfd(0, EFD_CLOEXEC);
	if (w->notify_fd < 0) {
		snprintf(why, whylen, "cannot create an eventfd: %s", strerror(errno));
		return -errno;
	}
	cq = roundup_pow2(WORKER_CQES_PER_SESSION * max_sessions + cfg->buffers + LISTENER_BACKLOG +
			  WORKER_CQ_RESERVE);
	if (cq < 2 * WORKER_SQ_ENTRIES) /* the kernel wants CQ >= SQ; twice is its default */
		cq = 2 * WORKER_SQ_ENTRIES;
	if (cq > WORKER_CQ_MAX)
		cq = WORKER_CQ_MAX;
	rc = loop_new(cfg->backend, WORKER_SQ_ENTRIES, cq, &w->env.loop, why, whylen);
	if (rc < 0)
		return rc;
	rc = loop_probe(w->env.loop, why, whylen);
	if (rc < 0)
		goto err_loop;
	w->env.recv_bundle = loop_has_recv_bundle(w->env.loop) && !env_off("UPROXY_RECV_BUNDLE");
	/* Two fallback ids per session: one per direction at most. */
	rc = bufring_init(&w->bufs, w->env.loop, 0, cfg->buffers, cfg->buffer_size,
			  2 * max_sessions, why, whylen);
	if (rc < 0)
		goto err_loop;
	if (w->alog_fd >= 0) {
		w->env.alog = calloc(1, sizeof(*w->env.alog));
		if (w->env.alog == NULL) {
			snprintf(why, whylen, "cannot allocate the access-log buffers");
			rc = -ENOMEM;
			goto err_bufs;
		}
		w->env.alog->fd = w->alog_fd;
		w->env.alog->json = cfg->log_json;
		w->env.alog->dropped = &w->st.log_dropped;
	}
	if (cfg->send_proxy || cfg->accept_proxy) {
		w->env.pre = calloc(max_sessions, sizeof(*w->env.pre));
		if (w->env.pre == NULL) {
			snprintf(why, whylen, "cannot allocate PROXY protocol buffers");
			rc = -ENOMEM;
			goto err_bufs;
		}
	}
	if (w->env.alog != NULL || cfg->balance == BALANCE_HASH || w->env.pre != NULL) {
		w->env.peer_addrs = calloc(max_sessions, sizeof(*w->env.peer_addrs));
		if (w->env.peer_addrs == NULL) {
			snprintf(why, whylen, "cannot allocate %u client address slots",
				 max_sessions);
			rc = -ENOMEM;
			goto err_bufs;
		}
	}
	/* calloc'd slab: pages are touched only as slots are first used. */
	w->env.slab = calloc(max_sessions, sizeof(*w->env.slab));
	if (w->env.slab == NULL) {
		snprintf(why, whylen, "cannot allocate %u session slots", max_sessions);
		rc = -ENOMEM;
		goto err_bufs;
	}
	for (uint32_t i = 0; i < max_sessions; i++) {
		w->env.slab[i].next_free = i + 1 < max_sessions ? i + 1 : UINT32_MAX;
		w->env.slab[i].fd[0] = w->env.slab[i].fd[1] = -1;
	}
	w->free_head = 0;
	{
		uint64_t share =
			(uint64_t)cfg->buffers * cfg->buffer_size / SESSION_POOL_SHARE_DIVISOR;

		w->env.high_water =
			share < SESSION_HIGH_WATER ? (uint32_t)share : SESSION_HIGH_WATER;
		if (w->env.high_water < 2 * cfg->buffer_size)
			w->env.high_water = 2 * cfg->buffer_size;
	}
	{
		char desc[160];

		loop_describe(w->env.loop, desc, sizeof(desc));
		log_debug("worker %d: %s recv_bundle=%d, %u buffers of %u bytes, %u session slots",
			  w->id, desc, w->env.recv_bundle, cfg->buffers, cfg->buffer_size,
			  max_sessions);
	}
	return 0;

err_bufs:
	free_slot_arrays(w);
	loop_free(w->env.loop);
	bufring_destroy(&w->bufs);
	goto err_notify;
err_loop:
	loop_free(w->env.loop);
err_notify:
	w->env.loop = NULL;
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
	loop_free(w->env.loop);
	w->env.loop = NULL;
	bufring_destroy(&w->bufs);
	free_slot_arrays(w);
	backend_pool_free(w->env.pool);
	w->env.pool = NULL;
	timer_wheel_free(w->env.wheel);
	w->env.wheel = NULL;
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
		for (uint32_t id = 0; id < backend_slots(w->env.pool); id++) {
			struct backend_info bi;

			if (backend_info(w->env.pool, id, &bi) < 0 || bi.removed)
				continue;
			table[n].addr = bi.addr;
			table[n].active = bi.active;
			table[n].up = bi.up;
			n++;
		}
		w->backends_published_ms = w->env.now_ms;
		w->env.backends_dirty = false;
	}
	stats_publish(w->snap, w->active, &w->st, loop_stats(w->env.loop), backends ? table : NULL,
		      n);
}

/* ---- stopping ---- */

/* Tells every open session to close now (after the drain, or on a second signal). */
void worker_close_all(struct worker *w)
{
	if (w->closing_all)
		return;
	w->closing_all = true;
	if (w->active > 0)
		log_info("worker %d: closing %u connections still open", w->id, w->active);
	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->env.slab[i];

		if (s->state != SS_FREE && s->state != SS_CLOSING)
			session_abort(&w->env, s, CLOSE_SHUTDOWN);
	}
	worker_timer_arm(w, TIMER_STOP_DEADLINE, WORKER_STOP_DEADLINE_MS);
}

void worker_stop(struct worker *w, int signo)
{
	if (w->sigfd >= 0) {
		for (int i = 0; i < w->npeers; i++)
			if (&w->peers[i] != w)
				worker_post_stop(&w->peers[i]);
	}
	if (w->stopping) {
		if (w->sigfd >= 0)
			log_warn("second %s: closing every connection now", strsignal(signo));
		worker_close_all(w);
		return;
	}
	if (w->sigfd >= 0) {
		log_info("received %s: no longer accepting; draining connections for up to %u ms",
			 strsignal(signo), w->env.cfg->drain_timeout_ms);
		if (w->notify != NULL)
			sdnotify_stopping(w->notify);
	}
	w->stopping = true;
	httpstats_stop(&w->hs);
	for (int i = 0; i < w->nlisteners; i++) {
		struct listener *l = &w->listeners[i];

		/* Cancels the accept and closes the listener in one hard-linked pair. */
		loop_cancel_fd_then_close(w->env.loop, l->fd,
					  tag_make((uint32_t)i, 0, CW_STOP_CANCEL, OP_CANCEL_W),
					  tag_make((uint32_t)i, 0, CW_STOP_CLOSE, OP_CANCEL_W));
		w->misc_inflight += 2;
		l->fd = -1;
	}
	timer_cancel(w->env.wheel, &w->timers[TIMER_ACCEPT_BACKOFF]);
	timer_cancel(w->env.wheel, &w->timers[TIMER_HEALTH]);
	if (w->env.cfg->drain_timeout_ms == 0) {
		worker_close_all(w);
		return;
	}
	/* Sessions finish on their own; whatever is left when this fires is closed. The worker
	 * exits as soon as the last session is gone, whether or not it fired. */
	worker_timer_arm(w, TIMER_DRAIN, w->env.cfg->drain_timeout_ms);
}

static void signal_arm(struct worker *w)
{
	loop_read(w->env.loop, w->sigfd, &w->siginfo, sizeof(w->siginfo),
		  tag_make(0, 0, 0, OP_SIGNAL));
}

static void notify_arm(struct worker *w)
{
	loop_read(w->env.loop, w->notify_fd, &w->notify_val, sizeof(w->notify_val),
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
		w->env.now_ms = monotonic_ms();
		w->clock_stale = false;
	}

	switch (op) {
	case OP_ACCEPT:
		accept_done(w, c);
		return;
	case OP_SIGNAL:
		if (c->res == (int)sizeof(w->siginfo))
			worker_stop(w, (int)w->siginfo.ssi_signo);
		if (!w->stop_deadline_hit)
			signal_arm(w);
		return;
	case OP_NOTIFY:
		mailbox_take(w);
		if (!w->stop_deadline_hit)
			notify_arm(w);
		return;
	case OP_PROBE:
		health_done(w, c);
		return;
	case OP_STATS:
		worker_publish_stats(w, true);
		httpstats_handle(&w->hs, c);
		return;
	case OP_LOG:
		w->misc_inflight--;
		w->log_writing = false;
		accesslog_done(w->env.alog, c->res);
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
	struct session *s = &w->env.slab[tag_slot(tag)];

	if (s->gen != tag_gen(tag) || s->state == SS_FREE) {
		/* Cannot happen while slots are freed only with nothing in flight; counted and
		 * dropped, never applied to the slot's new tenant. A buffer it carries goes back.
		 */
		w->st.stale_cqes++;
		if (c->flags & LOOP_CQE_BUFFER) {
			uint32_t bid = c->bid;

			bufring_took(&w->bufs, bid, 0);
			bufring_put(&w->bufs, bid);
		}
		return;
	}
	slab_outcome(w, s, session_handle(&w->env, s, c));
}

/* Starts the next access-log write if none is in flight (one per worker at a time). */
static void log_flush(struct worker *w)
{
	unsigned int n;
	const char *p;

	if (w->log_writing)
		return;
	p = accesslog_next(w->env.alog, &n);
	if (p == NULL)
		return;
	loop_write(w->env.loop, w->env.alog->fd, p, n, tag_make(0, 0, 0, OP_LOG));
	w->log_writing = true;
	w->misc_inflight++;
}

void worker_timer_arm(struct worker *w, enum worker_timer k, uint32_t ms)
{
	timer_arm(w->env.wheel, &w->timers[k], w->env.now_ms + ms);
}

/* A deadline on the wheel passed: a session's (kind 0) or one of the worker's. */
static void on_timer(struct timer_node *n, void *ctx)
{
	struct worker *w = ctx;

	switch (n->kind) {
	case TIMER_ACCEPT_BACKOFF:
		w->accept_backoff = false;
		break;
	case TIMER_STOP_DEADLINE:
		w->stop_deadline_hit = true;
		break;
	case TIMER_DRAIN:
		worker_close_all(w);
		break;
	case TIMER_HEALTH:
		if (!w->stopping)
			health_tick(w);
		break;
	default:
		session_timeout(&w->env, &w->env.slab[n->data]);
		break;
	}
}

/* Worker 0 with --stats: serves /metrics from every worker's snapshots. */
static void stats_endpoint_start(struct worker *w)
{
	w->hs.loop = w->env.loop;
	w->hs.snaps = calloc((size_t)w->npeers, sizeof(*w->hs.snaps));
	if (w->hs.snaps == NULL) {
		log_error("worker %d: out of memory for the metrics endpoint; not serving it",
			  w->id);
		return;
	}
	for (int i = 0; i < w->npeers; i++)
		w->hs.snaps[i] = w->peers[i].snap;
	w->hs.nsnaps = w->npeers;
	httpstats_start(&w->hs);
}

/* The ring failed for good: nothing more can be submitted. Every session is reset at once
 * with plain syscalls (its bytes cannot be forwarded any more: never a clean FIN), the other
 * workers are told to close theirs, and the process exits non-zero so that a supervisor
 * restarts it, instead of living on with one dead worker. */
static void fail_fatal(struct worker *w, int rc)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->env.slab[i];

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
		  loop_backend_name(w->env.loop), strerror(-rc), n);
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
	if (w->env.cfg->health_interval_ms > 0)
		health_tick(w);
	accept_update(w);
	if (w->hs.nfds > 0)
		stats_endpoint_start(w);
	while (!(w->stopping && w->active == 0 && w->misc_inflight == 0)) {
		int64_t wait = timer_next_ms(w->env.wheel, w->env.now_ms);
		int rc;

		if (w->snap != NULL && w->env.backends_dirty &&
		    (wait < 0 || wait > STATS_BACKENDS_EVERY_MS))
			wait = STATS_BACKENDS_EVERY_MS;
		w->clock_stale = true;
		rc = loop_run_once(w->env.loop, dispatch, w, wait);

		if (rc < 0) {
			fail_fatal(w, rc);
			status = 1;
			break;
		}
		w->env.now_ms = monotonic_ms();
		if (timer_count(w->env.wheel) > 0)
			timer_advance(w->env.wheel, w->env.now_ms, on_timer, w);
		bufring_commit(&w->bufs, w->env.now_ms);
		accept_update(w);
		if (w->env.alog != NULL)
			log_flush(w);
		/* Counters every iteration (a few hundred bytes); the per-upstream table when it
		 * changed, at most every STATS_BACKENDS_EVERY_MS (the wait above wakes for it). */
		if (w->snap != NULL)
			worker_publish_stats(w, w->env.backends_dirty &&
							w->env.now_ms - w->backends_published_ms >=
								STATS_BACKENDS_EVERY_MS);
		if (w->stop_deadline_hit) {
			if (w->active > 0 || w->misc_inflight > 0)
				log_warn("exiting with %u connections still closing", w->active);
			break;
		}
	}
	/* Publish what the last batch recycled before the ring goes away. */
	bufring_commit(&w->bufs, w->env.now_ms);
	if (w->env.alog != NULL && !w->log_writing)
		accesslog_drain(w->env.alog);
	stats_log_summary(&w->st, loop_stats(w->env.loop), w->id);
	return status;
}

/* ---- set-up by main (struct worker is private) ---- */

struct worker *workers_new(uint32_t n)
{
	struct worker *ws = calloc(n, sizeof(*ws));

	if (ws == NULL)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		struct worker *w = &ws[i];

		w->id = (int)i;
		w->sigfd = -1;
		w->notify_fd = -1;
		w->alog_fd = -1;
		w->peers = ws;
		w->npeers = (int)n;
		worker_mailbox_init(w);
	}
	return ws;
}

struct worker *worker_nth(struct worker *ws, uint32_t i)
{
	return &ws[i];
}

void workers_free(struct worker *ws, uint32_t n)
{
	for (uint32_t i = 0; ws != NULL && i < n; i++) {
		struct worker *w = &ws[i];

		/* A worker that ran closed its own (worker_destroy sets them to -1, nfds to 0). */
		for (int j = 0; j < w->nlisteners; j++)
			if (w->listeners[j].fd >= 0)
				close(w->listeners[j].fd);
		for (int j = 0; j < w->hs.nfds; j++)
			close(w->hs.fds[j]);
		free(w->snap);
	}
	free(ws);
}

int worker_bind(struct worker *w, const struct hostport *hp, const int *act, int nact, char *why,
		size_t whylen)
{
	int n = nact > 0 ? listener_adopt(act, nact, w->id == 0, w->listeners, why, whylen)
			 : listener_open(hp, w->listeners, WORKER_MAX_LISTENERS, why, whylen);

	if (n >= 0)
		w->nlisteners = n;
	return n;
}

int worker_listener_count(const struct worker *w)
{
	return w->nlisteners;
}

const struct addr *worker_listener_addr(const struct worker *w, int i)
{
	return &w->listeners[i].addr;
}

int worker_enable_stats(struct worker *w)
{
	w->snap = calloc(1, sizeof(*w->snap));
	return w->snap != NULL ? 0 : -ENOMEM;
}

void worker_serve_stats(struct worker *w, const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		w->hs.fds[i] = fds[i];
	w->hs.nfds = n;
}

void worker_set_access_log(struct worker *w, int fd)
{
	w->alog_fd = fd;
}

void worker_set_signals(struct worker *w, int sigfd, const struct sdnotify *sn)
{
	w->sigfd = sigfd;
	w->notify = sn;
}

uint32_t worker_active(const struct worker *w)
{
	return __atomic_load_n(&w->active, __ATOMIC_RELAXED);
}
