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

#include "uproxy/climit.h"
#include "uproxy/steer.h"
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

/* Applies a new membership to pool p and refreshes its per-id address table. */
int worker_pool_apply(struct worker *w, uint32_t p, const struct backend_spec *specs, int n)
{
	struct upool *u = &w->pools[p];
	int rc = backend_pool_update(u->bp, specs, n);

	if (rc < 0)
		return rc;
	for (uint32_t id = 0; id < backend_slots(u->bp); id++) {
		struct backend_info bi;

		if (backend_info(u->bp, id, &bi) < 0)
			continue;
		/* A reused id names another upstream: results still in flight for the old one
		 * (health probes) carry the old generation and are ignored. */
		if (!addr_equal(&u->baddr[id], &bi.addr))
			u->bgen[id] = (u->bgen[id] + 1) & TAG_GEN_MASK;
		u->baddr[id] = bi.addr;
	}
	w->env.backends_dirty = true;
	return 0;
}

/* ---- pools and listeners: slots that live while anything uses them ---- */

/* A pool slot's balancer and per-id arrays (any of them may be NULL). */
static void upool_free_arrays(struct upool *u)
{
	backend_pool_free(u->bp);
	free(u->baddr);
	free(u->bgen);
	free(u->probes);
	u->bp = NULL;
	u->baddr = NULL;
	u->bgen = NULL;
	u->probes = NULL;
}

static void upool_free(struct worker *w, uint32_t p)
{
	struct upool *u = &w->pools[p];

	timer_cancel(w->env.wheel, &u->health);
	upool_free_arrays(u);
	u->used = false;
	w->env.backends_dirty = true;
}

/* One user of pool p is gone (a session, a probe): a retired pool goes when none is left. */
void upool_put(struct worker *w, uint32_t p)
{
	struct upool *u = &w->pools[p];

	u->refs--;
	if (u->retired && u->refs == 0)
		upool_free(w, p);
}

/* Options that shape the balancer itself: a change needs a new one. */
static bool pool_same_balancer(const struct config_pool *a, const struct config_pool *b)
{
	return a->balance == b->balance && a->fail_threshold == b->fail_threshold &&
	       a->fail_timeout_s == b->fail_timeout_s;
}

/* A new pool slot for cfg, or -1 (full, out of memory; logged). */
static int upool_new(struct worker *w, const struct config_pool *cfg)
{
	struct backend_opts bo;
	struct upool *u;
	uint32_t p = 0;

	while (p < UPOOL_MAX && w->pools[p].used)
		p++;
	if (p == UPOOL_MAX) {
		log_error("worker %d: more than %d pools in use (replaced ones still drain); pool "
			  "%s not set up",
			  w->id, UPOOL_MAX, cfg->name);
		return -1;
	}
	u = &w->pools[p];
	backend_opts_defaults(&bo);
	bo.balance = cfg->balance;
	bo.fail_threshold = cfg->fail_threshold;
	bo.fail_timeout_ms = cfg->fail_timeout_s * 1000;
	bo.seed = (uint64_t)w->env.now_ms * 2654435761u + (uint64_t)w->id * 977 + p;
	u->baddr = calloc(BACKEND_MAX, sizeof(*u->baddr));
	u->bgen = calloc(BACKEND_MAX, sizeof(*u->bgen));
	u->probes = calloc(BACKEND_MAX, sizeof(*u->probes));
	if (u->baddr == NULL || u->bgen == NULL || u->probes == NULL ||
	    backend_pool_new(&bo, &u->bp) < 0) {
		upool_free_arrays(u);
		log_error("worker %d: out of memory setting up pool %s", w->id, cfg->name);
		return -1;
	}
	u->cfg = *cfg;
	u->used = true;
	u->retired = false;
	u->refs = 0;
	timer_node_init(&u->health, TIMER_HEALTH, p);
	return (int)p;
}

/* Rebuilds the list of listeners that accept (after a plan, a removal or a free). */
static void accepting_update(struct worker *w)
{
	w->naccepting = 0;
	for (uint32_t v = 0; v < SVC_MAX; v++)
		if (w->svcs[v].used && !w->svcs[v].removing)
			w->accepting[w->naccepting++] = (uint8_t)v;
}

/* The listener slot v can go once removed and without sessions. */
static void svc_free(struct worker *w, uint32_t v)
{
	struct svc *sv = &w->svcs[v];

	timer_cancel(w->env.wheel, &sv->drain);
	climit_free(sv->climit);
	sv->climit = NULL;
	sv->used = false;
}

/* Frees removed listener v once nothing uses it: no session, no socket close in flight (no
 * accept can complete on it any more). */
static void svc_free_if_done(struct worker *w, uint32_t v)
{
	struct svc *sv = &w->svcs[v];

	if (sv->removing && sv->sessions == 0 && sv->socks_closing == 0)
		svc_free(w, v);
}

void svc_put(struct worker *w, uint32_t v)
{
	w->svcs[v].sessions--;
	svc_free_if_done(w, v);
}

void svc_socket_closed(struct worker *w, uint32_t v)
{
	w->svcs[v].socks_closing--;
	svc_free_if_done(w, v);
}

void svc_close_sockets(struct worker *w, uint32_t v)
{
	struct svc *sv = &w->svcs[v];

	for (int i = 0; i < sv->nsocks; i++) {
		struct listener *l = &sv->socks[i];
		uint32_t slot = sock_tag_slot(v, i);

		if (l->fd < 0)
			continue;
		/* Cancels the accept and closes the listener in one hard-linked pair. */
		loop_cancel_fd_then_close(w->env.loop, l->fd,
					  tag_make(slot, 0, CW_STOP_CANCEL, OP_CANCEL_W),
					  tag_make(slot, 0, CW_STOP_CLOSE, OP_CANCEL_W));
		w->misc_inflight += 2;
		sv->socks_closing++;
		l->fd = -1;
	}
}

/* Closes every open session of listener v now (its drain time is over), or of every
 * listener for SVC_ALL. */
#define SVC_ALL UINT32_MAX
static void close_sessions(struct worker *w, uint32_t v)
{
	for (uint32_t i = 0; i < w->max_sessions; i++) {
		struct session *s = &w->env.slab[i];

		if (s->state != SS_FREE && s->state != SS_CLOSING && (v == SVC_ALL || s->svc == v))
			session_abort(&w->env, s, CLOSE_SHUTDOWN);
	}
}

/* Stops listener v: no more accepts; its sessions get its --drain-timeout, then are closed. */
static void svc_remove(struct worker *w, uint32_t v)
{
	struct svc *sv = &w->svcs[v];

	sv->removing = true;
	accepting_update(w);
	svc_close_sockets(w, v);
	if (sv->sessions == 0) {
		svc_free_if_done(w, v);
		return;
	}
	if (sv->cfg.drain_timeout_ms == 0)
		close_sessions(w, v);
	else
		timer_arm(w->env.wheel, &sv->drain, w->env.now_ms + sv->cfg.drain_timeout_ms);
}

/* The writer for (fd, json), made on first use. NULL when fd < 0 or out of memory. */
static struct accesslog *alog_for(struct worker *w, int fd, bool json)
{
	struct accesslog *al;

	if (fd < 0)
		return NULL;
	for (int i = 0; i < w->nalogs; i++)
		if (w->alogs[i]->fd == fd && w->alogs[i]->json == json)
			return w->alogs[i];
	if (w->nalogs == CONFIG_MAX_LISTENERS) {
		log_error("worker %d: more than %d access logs; not logging", w->id,
			  CONFIG_MAX_LISTENERS);
		return NULL;
	}
	al = calloc(1, sizeof(*al));
	if (al == NULL) {
		log_error("worker %d: out of memory for an access log; not logging", w->id);
		return NULL;
	}
	al->fd = fd;
	al->json = json;
	al->dropped = &w->st.log_dropped;
	w->alogs[w->nalogs++] = al;
	return al;
}

/* Per-client limits are exact only if each client always lands on the same worker: with
 * several workers, the reuseport group of the listener's sockets gets a program that picks
 * the worker from the client address (on), or loses it again (off). Every worker sets it on
 * its own sockets; the group shares one program. */
static void svc_steer(struct worker *w, uint32_t v, bool on)
{
	struct svc *sv = &w->svcs[v];
	char why[256];

	if (w->npeers < 2 || sv->steered == on)
		return;
	for (int i = 0; i < sv->nsocks; i++) {
		struct listener *l = &sv->socks[i];
		int rc = on ? steer_attach(l->fd, (unsigned int)w->npeers, l->addr.u.sa.sa_family,
					   why, sizeof(why))
			    : steer_detach(l->fd);

		if (rc < 0 && w->id == 0)
			log_warn("listener %s: %s; per-client limits apply per worker",
				 sv->cfg.name,
				 on ? why : "cannot detach the client steering program");
	}
	sv->steered = on;
}

/* Sets listener v's settings from ps; map turns plan pool indices into pool slots. */
static void svc_configure(struct worker *w, uint32_t v, const struct plan_svc *ps, const int *map)
{
	struct svc *sv = &w->svcs[v];
	const struct config_listener *c = &ps->cfg;
	bool limits = c->max_conns_per_client > 0 || c->rate_per_client > 0;

	sv->cfg = *c;
	sv->pool =
		c->pool == CONFIG_NO_POOL || map[c->pool] < 0 ? UPOOL_NONE : (uint16_t)map[c->pool];
	for (uint32_t r = 0; r < c->nsni_routes; r++)
		sv->route_pool[r] = map[c->sni_routes[r].pool] < 0
					    ? UPOOL_NONE
					    : (uint16_t)map[c->sni_routes[r].pool];
	sv->alog = alog_for(w, ps->alog_fd, c->log_json);
	if (limits && sv->climit == NULL) {
		sv->climit =
			climit_new(c->client_table_size, c->max_conns_per_client,
				   c->rate_per_client, c->rate_burst, c->client_table_fail_open);
		if (sv->climit == NULL) {
			log_error("worker %d: listener %s: out of memory for the client table (%u "
				  "entries); per-client limits are off",
				  w->id, c->name, c->client_table_size);
			w->plan_failed = true;
		}
	} else if (limits && climit_entries(sv->climit) != c->client_table_size &&
		   climit_held(sv->climit) == 0) {
		/* A new size: a new table (it holds nothing worth keeping). */
		struct climit *t =
			climit_new(c->client_table_size, c->max_conns_per_client,
				   c->rate_per_client, c->rate_burst, c->client_table_fail_open);

		if (t == NULL) {
			log_error("worker %d: listener %s: out of memory for a client table of %u "
				  "entries; keeping the old one",
				  w->id, c->name, c->client_table_size);
			climit_set_limits(sv->climit, c->max_conns_per_client, c->rate_per_client,
					  c->rate_burst, c->client_table_fail_open);
		} else {
			climit_free(sv->climit);
			sv->climit = t;
		}
	} else if (limits) {
		if (climit_entries(sv->climit) != c->client_table_size && w->id == 0)
			log_warn("listener %s: client-table-size %u is applied by the first reload "
				 "that finds its table empty (the table of %u holds open "
				 "connections)",
				 c->name, c->client_table_size, climit_entries(sv->climit));
		climit_set_limits(sv->climit, c->max_conns_per_client, c->rate_per_client,
				  c->rate_burst, c->client_table_fail_open);
	} else if (sv->climit != NULL && climit_held(sv->climit) == 0) {
		climit_free(sv->climit);
		sv->climit = NULL;
	} else if (sv->climit != NULL) {
		/* Sessions still hold entries: keep the table, with no limit on new clients. */
		climit_set_limits(sv->climit, 0, 0, 0, true);
	}
	svc_steer(w, v, limits && !c->accept_proxy && !ps->shared_socks);
	sv->needs_peer = sv->alog != NULL || c->nacl > 0 || limits || c->send_proxy ||
			 c->accept_proxy ||
			 (sv->pool != UPOOL_NONE && w->pools[sv->pool].cfg.balance == BALANCE_HASH);
	for (uint32_t r = 0; r < c->nsni_routes && !sv->needs_peer; r++)
		sv->needs_peer = sv->route_pool[r] != UPOOL_NONE &&
				 w->pools[sv->route_pool[r]].cfg.balance == BALANCE_HASH;
}

void worker_apply_plan(struct worker *w, struct worker_plan *plan)
{
	int map[CONFIG_MAX_POOLS];
	bool keep_pool[UPOOL_MAX] = { false }, keep_svc[SVC_MAX] = { false };

	/* Pools: same name and balancer: kept (health and counters), membership updated. */
	for (uint32_t i = 0; i < plan->npools; i++) {
		const struct plan_pool *pp = &plan->pools[i];
		int p = -1;

		for (uint32_t k = 0; k < UPOOL_MAX && p < 0; k++)
			if (w->pools[k].used && !w->pools[k].retired &&
			    strcmp(w->pools[k].cfg.name, pp->cfg.name) == 0 &&
			    pool_same_balancer(&w->pools[k].cfg, &pp->cfg))
				p = (int)k;
		if (p < 0)
			p = upool_new(w, &pp->cfg);
		map[i] = p;
		if (p < 0) {
			w->plan_failed = true;
			continue;
		}
		keep_pool[p] = true;
		w->pools[p].cfg = pp->cfg;
		if (worker_pool_apply(w, (uint32_t)p, pp->specs, pp->nspecs) < 0)
			log_error("worker %d: pool %s: upstream list refused", w->id, pp->cfg.name);
		upool_watch_backup(&w->pools[p], UINT32_MAX, w->id);
		if (pp->cfg.health_interval_ms > 0 && !w->stopping) {
			if (!timer_armed(&w->pools[p].health))
				timer_arm(w->env.wheel, &w->pools[p].health, w->env.now_ms);
		} else {
			timer_cancel(w->env.wheel, &w->pools[p].health);
		}
	}
	/* Listeners: by name; a new one takes its sockets, a changed one its new settings (and
	 * new sockets if its address changed). */
	for (uint32_t i = 0; i < plan->nsvcs; i++) {
		struct plan_svc *ps = &plan->svcs[i];
		int v = -1;

		for (uint32_t k = 0; k < SVC_MAX && v < 0; k++)
			if (w->svcs[k].used && !w->svcs[k].removing &&
			    strcmp(w->svcs[k].cfg.name, ps->cfg.name) == 0)
				v = (int)k;
		if (v >= 0 && ps->nsocks >= 0) {
			/* Its address changed: the old sockets and their sessions drain like a
			 * removed listener's; the new sockets start a new one. */
			svc_remove(w, (uint32_t)v);
			v = -1;
		}
		if (v < 0) {
			for (uint32_t k = 0; k < SVC_MAX && v < 0; k++)
				if (!w->svcs[k].used)
					v = (int)k;
			if (v < 0) {
				log_error("worker %d: more than %d listeners (removed ones still "
					  "drain); listener %s not started",
					  w->id, SVC_MAX, ps->cfg.name);
				w->plan_failed = true;
				continue;
			}
			memset(&w->svcs[v], 0, sizeof(w->svcs[v]));
			w->svcs[v].used = true;
			timer_node_init(&w->svcs[v].drain, TIMER_SVC_DRAIN, (uint32_t)v);
		}
		keep_svc[v] = true;
		if (ps->nsocks >= 0) {
			memcpy(w->svcs[v].socks, ps->socks, sizeof(ps->socks));
			w->svcs[v].nsocks = ps->nsocks;
			ps->nsocks = 0; /* the worker owns them now */
		}
		svc_configure(w, (uint32_t)v, ps, map);
	}
	for (uint32_t k = 0; k < SVC_MAX; k++)
		if (w->svcs[k].used && !w->svcs[k].removing && !keep_svc[k])
			svc_remove(w, k);
	for (uint32_t k = 0; k < UPOOL_MAX; k++) {
		if (!w->pools[k].used || keep_pool[k] || w->pools[k].retired)
			continue;
		w->pools[k].retired = true;
		timer_cancel(w->env.wheel, &w->pools[k].health);
		if (w->pools[k].refs == 0)
			upool_free(w, k);
	}
	accepting_update(w);
	w->env.backends_dirty = true;
	worker_plan_free(plan);
}

/* The per-slot arrays worker_init allocates after the rings. */
static void free_slot_arrays(struct worker *w)
{
	for (uint32_t i = 0; w->env.pre != NULL && w->env.slab != NULL && i < w->max_sessions; i++)
		free(w->env.pre[i].hello);
	free(w->env.pre);
	free(w->env.peer_addrs);
	free(w->env.slab);
	w->env.pre = NULL;
	w->env.peer_addrs = NULL;
	w->env.slab = NULL;
}

/* An environment switch set to "0": a feature forced off (for tests and comparisons). */
static bool env_off(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && strcmp(v, "0") == 0;
}

int worker_init(struct worker *w, const struct config *cfg, uint32_t max_sessions, char *why,
		size_t whylen)
{
	unsigned int cq;
	int rc;

	w->env.cfg = cfg;
	w->env.bufs = &w->bufs;
	w->env.st = &w->st;
	w->env.svcs = w->svcs;
	w->env.pools = w->pools;
	w->env.worker_id = w->id;
	w->max_sessions = max_sessions;
	w->env.now_ms = monotonic_ms();
	if (timer_wheel_new(w->env.now_ms, &w->env.wheel) < 0) {
		snprintf(why, whylen, "out of memory setting up worker %d", w->id);
		return -ENOMEM;
	}
	for (int k = 1; k < TIMER__COUNT; k++)
		timer_node_init(&w->timers[k], (uint16_t)k, 0);
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
	/* calloc'd (mmap'd) per-slot arrays: a page is touched only when a session of a
	 * listener that needs it (PROXY protocol, SNI, access list, ...) uses the slot. */
	w->env.pre = calloc(max_sessions, sizeof(*w->env.pre));
	w->env.peer_addrs = calloc(max_sessions, sizeof(*w->env.peer_addrs));
	if (w->env.pre == NULL || w->env.peer_addrs == NULL) {
		snprintf(why, whylen, "cannot allocate %u client address slots", max_sessions);
		rc = -ENOMEM;
		goto err_bufs;
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
	if (w->plan0 != NULL) {
		struct worker_plan *plan = w->plan0;

		w->plan0 = NULL;
		worker_apply_plan(w, plan);
	}
	if (w->plan_failed) {
		/* At start a listener that cannot have what it was configured with is an error. */
		snprintf(why, whylen, "worker %d: cannot set up the listeners (see above)", w->id);
		rc = -ENOMEM;
		goto err_bufs;
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
	for (uint32_t v = 0; v < SVC_MAX; v++) {
		struct svc *sv = &w->svcs[v];

		for (int i = 0; sv->used && i < sv->nsocks; i++) {
			if (sv->socks[i].fd >= 0)
				close(sv->socks[i].fd);
			sv->socks[i].fd = -1;
		}
		if (sv->used)
			climit_free(sv->climit);
		sv->climit = NULL;
		sv->used = false;
	}
	if (w->sigfd >= 0)
		close(w->sigfd);
	if (w->notify_fd >= 0)
		close(w->notify_fd);
	w->sigfd = w->notify_fd = -1;
	for (uint32_t p = 0; p < UPOOL_MAX; p++) {
		struct upool *u = &w->pools[p];

		for (uint32_t id = 0; u->used && u->probes != NULL && id < BACKEND_MAX; id++) {
			if (u->probes[id].busy && u->probes[id].fd >= 0)
				close(u->probes[id].fd);
		}
	}
	httpstats_destroy(&w->hs);
	/* The ring first: its teardown ends every send that may still read a buffer. */
	loop_free(w->env.loop);
	w->env.loop = NULL;
	bufring_destroy(&w->bufs);
	free_slot_arrays(w);
	for (uint32_t p = 0; p < UPOOL_MAX; p++)
		if (w->pools[p].used)
			upool_free(w, p);
	timer_wheel_free(w->env.wheel);
	w->env.wheel = NULL;
	for (int i = 0; i < w->nalogs; i++)
		free(w->alogs[i]);
	w->nalogs = 0;
	worker_plan_free(w->mbox.plan);
	w->mbox.plan = NULL;
	worker_plan_free(w->plan0);
	w->plan0 = NULL;
}

void worker_publish_stats(struct worker *w, bool backends)
{
	static __thread struct stats_backend table[BACKEND_MAX];
	static __thread struct stats_listener lst[STATS_MAX_LISTENERS];
	static __thread struct stats_pool pst[STATS_MAX_POOLS];
	uint32_t n = 0, nl = 0, np = 0;

	if (w->snap == NULL)
		return;
	if (backends) {
		for (uint32_t p = 0; p < UPOOL_MAX && np < STATS_MAX_POOLS; p++) {
			struct upool *u = &w->pools[p];

			if (!u->used || u->retired)
				continue;
			snprintf(pst[np].name, STATS_NAME_MAX, "%s", u->cfg.name);
			pst[np].on_backup = backend_pool_using_backup(u->bp);
			for (uint32_t id = 0; id < backend_slots(u->bp) && n < BACKEND_MAX; id++) {
				struct backend_info bi;

				if (backend_info(u->bp, id, &bi) < 0 || bi.removed)
					continue;
				table[n].addr = bi.addr;
				table[n].active = bi.active;
				table[n].up = bi.up;
				table[n].backup = bi.backup;
				table[n].pool = (uint16_t)np;
				n++;
			}
			np++;
		}
		w->backends_published_ms = w->env.now_ms;
		w->env.backends_dirty = false;
	}
	for (uint32_t v = 0; v < SVC_MAX && nl < STATS_MAX_LISTENERS; v++) {
		struct svc *sv = &w->svcs[v];

		if (!sv->used)
			continue;
		snprintf(lst[nl].name, STATS_NAME_MAX, "%s", sv->cfg.name);
		lst[nl].active = sv->sessions;
		lst[nl].st = sv->st;
		nl++;
	}
	stats_publish(w->snap, w->active, &w->st, loop_stats(w->env.loop), backends ? table : NULL,
		      n, lst, nl, pst, np);
}

/* Whether a listener's drain is still running. */
static bool drains_pending(const struct worker *w)
{
	for (uint32_t v = 0; v < SVC_MAX; v++)
		if (w->svcs[v].used && timer_armed(&w->svcs[v].drain))
			return true;
	return false;
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
	close_sessions(w, SVC_ALL);
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
	w->drain_max_ms = 0;
	for (uint32_t v = 0; v < SVC_MAX; v++)
		if (w->svcs[v].used && w->svcs[v].cfg.drain_timeout_ms > w->drain_max_ms)
			w->drain_max_ms = w->svcs[v].cfg.drain_timeout_ms;
	if (w->sigfd >= 0) {
		log_info("received %s: no longer accepting; draining connections for up to %u ms",
			 strsignal(signo), w->drain_max_ms);
		if (w->notify != NULL)
			sdnotify_stopping(w->notify);
	}
	w->stopping = true;
	httpstats_stop(&w->hs);
	timer_cancel(w->env.wheel, &w->timers[TIMER_ACCEPT_BACKOFF]);
	for (uint32_t p = 0; p < UPOOL_MAX; p++)
		timer_cancel(w->env.wheel, &w->pools[p].health);
	/* Every listener is removed: sessions finish on their own within their listener's
	 * --drain-timeout; what is left then is closed. The worker exits as soon as the last
	 * session is gone. */
	for (uint32_t v = 0; v < SVC_MAX; v++)
		if (w->svcs[v].used && !w->svcs[v].removing)
			svc_remove(w, v);
	if (w->active > 0 && !drains_pending(w))
		worker_close_all(w);
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
		w->log_writing[tag_slot(tag)] = false;
		accesslog_done(w->alogs[tag_slot(tag)], c->res);
		return;
	case OP_CANCEL_W: {
		struct listener *l = &w->svcs[tag_svc(tag)].socks[tag_sock(tag)];

		w->misc_inflight--;
		if (tag_side(tag) == CW_MULTI)
			l->cancel_multi = false;
		else if (tag_side(tag) == CW_SINGLE)
			l->cancel_single = false;
		else if (tag_side(tag) == CW_STOP_CLOSE)
			svc_socket_closed(w, tag_svc(tag));
		return;
	}
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

/* Starts the next write of each access log that has none in flight. */
static void log_flush(struct worker *w)
{
	for (int i = 0; i < w->nalogs; i++) {
		unsigned int n;
		const char *p;

		if (w->log_writing[i])
			continue;
		p = accesslog_next(w->alogs[i], &n);
		if (p == NULL)
			continue;
		loop_write(w->env.loop, w->alogs[i]->fd, p, n, tag_make((uint32_t)i, 0, 0, OP_LOG));
		w->log_writing[i] = true;
		w->misc_inflight++;
	}
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
	case TIMER_SVC_DRAIN:
		close_sessions(w, n->data);
		/* After a stop signal, the last listener's drain ending closes everything. */
		if (w->stopping && !drains_pending(w))
			worker_close_all(w);
		break;
	case TIMER_HEALTH:
		if (!w->stopping && w->pools[n->data].used && !w->pools[n->data].retired)
			health_tick(w, n->data);
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
		if (w->nalogs > 0)
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
	for (int i = 0; i < w->nalogs; i++)
		if (!w->log_writing[i])
			accesslog_drain(w->alogs[i]);
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

		/* A worker that ran freed its plan (worker_destroy); one that never did, not. */
		worker_plan_free(w->plan0);
		w->plan0 = NULL;
		for (int j = 0; j < w->hs.nfds; j++)
			close(w->hs.fds[j]);
		free(w->snap);
	}
	free(ws);
}

void worker_set_plan(struct worker *w, struct worker_plan *plan)
{
	w->plan0 = plan;
}

void worker_plan_free(struct worker_plan *plan)
{
	if (plan == NULL)
		return;
	for (uint32_t i = 0; i < plan->nsvcs; i++)
		for (int k = 0; k < plan->svcs[i].nsocks; k++)
			if (plan->svcs[i].socks[k].fd >= 0)
				close(plan->svcs[i].socks[k].fd);
	for (uint32_t i = 0; i < plan->npools; i++)
		free(plan->pools[i].specs);
	free(plan);
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

void worker_set_signals(struct worker *w, int sigfd, const struct sdnotify *sn)
{
	w->sigfd = sigfd;
	w->notify = sn;
}

uint32_t worker_active(const struct worker *w)
{
	return __atomic_load_n(&w->active, __ATOMIC_RELAXED);
}
