/* stats: names, publishes and renders the per-worker counters. Counters are plain integers
 * bumped by the owning worker; other threads see them only through seqlock snapshots. */
#include "uproxy/stats.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "uproxy/log.h"

const uint32_t stats_connect_bounds_us[STATS_CONNECT_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 500000, 2000000,
};

static const char *const reason_names[CLOSE__COUNT] = {
	[CLOSE_NORMAL] = "normal",
	[CLOSE_CLIENT_RESET] = "client_reset",
	[CLOSE_UPSTREAM_RESET] = "upstream_reset",
	[CLOSE_CONNECT_FAILED] = "connect_failed",
	[CLOSE_SHUTDOWN] = "shutdown",
	[CLOSE_RESOURCE] = "resource",
	[CLOSE_TIMEOUT] = "timeout",
	[CLOSE_PROTOCOL] = "protocol",
	[CLOSE_DENIED] = "denied",
	[CLOSE_LIMITED] = "limited",
};

const char *close_reason_name(enum close_reason r)
{
	if ((unsigned)r >= CLOSE__COUNT)
		return "?";
	return reason_names[r];
}

void stats_connect_observe(struct worker_stats *st, uint64_t us)
{
	int i = 0;

	while (i < STATS_CONNECT_BUCKETS && us > stats_connect_bounds_us[i])
		i++;
	st->connect_hist[i]++;
	st->connect_sum_us += us;
}

void stats_log_summary(const struct worker_stats *st, const struct loop_stats *ls, int worker)
{
	log_info("worker %d: accepted=%" PRIu64 " closed normal=%" PRIu64 " client_reset=%" PRIu64
		 " upstream_reset=%" PRIu64 " connect_failed=%" PRIu64 " shutdown=%" PRIu64
		 " resource=%" PRIu64 " timeout=%" PRIu64 " protocol=%" PRIu64 " bytes c2u=%" PRIu64
		 " u2c=%" PRIu64 " connect_errors=%" PRIu64 " accept_errors=%" PRIu64
		 " accept_backoffs=%" PRIu64 " accept_overflow=%" PRIu64 " buf_exhausted=%" PRIu64
		 " fallback_recvs=%" PRIu64 " truncated client=%" PRIu64 " upstream=%" PRIu64
		 " backpressure=%" PRIu64 " stale_cqes=%" PRIu64 " enters=%" PRIu64 " sqes=%" PRIu64
		 " cqes=%" PRIu64 " cq_overflow=%" PRIu64 " cq_lost=%" PRIu64
		 " enter_retries=%" PRIu64 " sq_backlog=%" PRIu64,
		 worker, st->accepted, st->closed[CLOSE_NORMAL], st->closed[CLOSE_CLIENT_RESET],
		 st->closed[CLOSE_UPSTREAM_RESET], st->closed[CLOSE_CONNECT_FAILED],
		 st->closed[CLOSE_SHUTDOWN], st->closed[CLOSE_RESOURCE], st->closed[CLOSE_TIMEOUT],
		 st->closed[CLOSE_PROTOCOL], st->bytes[0], st->bytes[1], st->connect_errors,
		 st->accept_errors, st->accept_backoffs, st->accept_overflow, st->buf_exhausted,
		 st->fallback_recvs, st->truncated[0], st->truncated[1], st->backpressure,
		 st->stale_cqes, ls->enters, ls->submitted, ls->cqes, ls->cq_overflow, ls->cq_lost,
		 ls->enter_retries, ls->sq_backlog);
}

uint64_t stats_reloads[2];

void stats_publish(struct stats_snapshot *snap, uint32_t active, const struct worker_stats *st,
		   const struct loop_stats *ls, const struct stats_backend *backends, uint32_t nb,
		   const struct stats_listener *ls_, uint32_t nl, const struct stats_pool *pools,
		   uint32_t np)
{
	uint32_t seq = __atomic_load_n(&snap->seq, __ATOMIC_RELAXED);

	__atomic_store_n(&snap->seq, seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	snap->active = active;
	snap->st = *st;
	snap->ls = *ls;
	if (backends != NULL) {
		snap->nbackends = nb;
		memcpy(snap->backends, backends, (size_t)nb * sizeof(*backends));
		snap->npools = np;
		if (np > 0)
			memcpy(snap->pools, pools, (size_t)np * sizeof(*pools));
	}
	snap->nlisteners = nl;
	if (nl > 0)
		memcpy(snap->listeners, ls_, (size_t)nl * sizeof(*ls_));
	__atomic_store_n(&snap->seq, seq + 2, __ATOMIC_RELEASE);
}

void stats_read(const struct stats_snapshot *snap, struct stats_snapshot *out)
{
	for (;;) {
		uint32_t s1 = __atomic_load_n(&snap->seq, __ATOMIC_ACQUIRE), s2;

		if (s1 & 1)
			continue;
		out->active = snap->active;
		out->st = snap->st;
		out->ls = snap->ls;
		out->nbackends = snap->nbackends;
		memcpy(out->backends, snap->backends,
		       (size_t)out->nbackends * sizeof(out->backends[0]));
		out->nlisteners = snap->nlisteners;
		memcpy(out->listeners, snap->listeners,
		       (size_t)out->nlisteners * sizeof(out->listeners[0]));
		out->npools = snap->npools;
		memcpy(out->pools, snap->pools, (size_t)out->npools * sizeof(out->pools[0]));
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		s2 = __atomic_load_n(&snap->seq, __ATOMIC_RELAXED);
		if (s1 == s2)
			return;
	}
}

struct out {
	char *buf;
	size_t len, pos;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(o->pos < o->len ? o->buf + o->pos : NULL,
		      o->pos < o->len ? o->len - o->pos : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->pos += (size_t)n;
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

#define SUM(field)                                                                                 \
	({                                                                                         \
		uint64_t _v = 0;                                                                   \
		for (int _i = 0; _i < n; _i++)                                                     \
			_v += (uint64_t)snaps[_i].field;                                           \
		_v;                                                                                \
	})

static void counter(struct out *o, const char *name, const char *help, uint64_t v)
{
	head(o, name, "counter", help);
	put(o, "%s %" PRIu64 "\n", name, v);
}

/* The listeners of every worker, merged by name (a listener runs in every worker). */
struct lagg {
	char name[STATS_NAME_MAX];
	uint64_t active;
	struct listener_stats st;
};

static uint32_t listeners_merge(const struct stats_snapshot *snaps, int n, struct lagg *agg)
{
	uint32_t na = 0;

	for (int w = 0; w < n; w++) {
		for (uint32_t i = 0; i < snaps[w].nlisteners; i++) {
			const struct stats_listener *l = &snaps[w].listeners[i];
			const uint64_t *src = (const uint64_t *)&l->st;
			uint64_t *dst;
			uint32_t j = 0;

			while (j < na && strcmp(agg[j].name, l->name) != 0)
				j++;
			if (j == na) {
				if (na == STATS_MAX_LISTENERS)
					continue;
				memset(&agg[na], 0, sizeof(agg[na]));
				snprintf(agg[na].name, sizeof(agg[na].name), "%s", l->name);
				na++;
			}
			agg[j].active += l->active;
			dst = (uint64_t *)&agg[j].st;
			for (size_t k = 0; k < sizeof(l->st) / sizeof(uint64_t); k++)
				dst[k] += src[k];
		}
	}
	return na;
}

/* One listener's two samples of a series split by a second label (direction, side). */
static void pair_series(struct out *o, const char *name, const char *listener, const char *label,
			const char *v0, const char *v1, const uint64_t v[2])
{
	put(o, "%s{listener=\"%s\",%s=\"%s\"} %" PRIu64 "\n", name, listener, label, v0, v[0]);
	put(o, "%s{listener=\"%s\",%s=\"%s\"} %" PRIu64 "\n", name, listener, label, v1, v[1]);
}

/* The per-session series, one per listener (label `listener`). */
static void listener_series(struct out *o, const struct stats_snapshot *snaps, int n)
{
	static __thread struct lagg agg[STATS_MAX_LISTENERS];
	static const char *const limits[3] = { "conns", "rate", "table" };
	uint32_t na = listeners_merge(snaps, n, agg);

	head(o, "uproxy_connections_accepted_total", "counter", "Client connections accepted.");
	for (uint32_t j = 0; j < na; j++)
		put(o, "uproxy_connections_accepted_total{listener=\"%s\"} %" PRIu64 "\n",
		    agg[j].name, agg[j].st.accepted);
	head(o, "uproxy_connections_active", "gauge", "Client connections open now.");
	for (uint32_t j = 0; j < na; j++)
		put(o, "uproxy_connections_active{listener=\"%s\"} %" PRIu64 "\n", agg[j].name,
		    agg[j].active);
	head(o, "uproxy_connections_closed_total", "counter",
	     "Client connections closed, by reason (limit: accepted while stopping or full).");
	for (uint32_t j = 0; j < na; j++)
		for (int r = 0; r < CLOSE__COUNT; r++)
			put(o,
			    "uproxy_connections_closed_total{listener=\"%s\",reason=\"%s\"} "
			    "%" PRIu64 "\n",
			    agg[j].name, reason_names[r], agg[j].st.closed[r]);
	for (uint32_t j = 0; j < na; j++)
		put(o,
		    "uproxy_connections_closed_total{listener=\"%s\",reason=\"limit\"} %" PRIu64
		    "\n",
		    agg[j].name, agg[j].st.overflow);
	head(o, "uproxy_bytes_total", "counter", "Bytes forwarded, by direction.");
	for (uint32_t j = 0; j < na; j++)
		pair_series(o, "uproxy_bytes_total", agg[j].name, "direction", "client_to_upstream",
			    "upstream_to_client", agg[j].st.bytes);
	head(o, "uproxy_connections_truncated_total", "counter",
	     "Sessions ended with bytes lost toward a side (that side was reset).");
	for (uint32_t j = 0; j < na; j++)
		pair_series(o, "uproxy_connections_truncated_total", agg[j].name, "side", "client",
			    "upstream", agg[j].st.truncated);
	head(o, "uproxy_connections_denied_total", "counter",
	     "Clients refused by the listener's access list.");
	for (uint32_t j = 0; j < na; j++)
		put(o, "uproxy_connections_denied_total{listener=\"%s\"} %" PRIu64 "\n",
		    agg[j].name, agg[j].st.denied);
	head(o, "uproxy_connections_limited_total", "counter",
	     "Clients refused by a per-client limit (conns, rate) or a full client table.");
	for (uint32_t j = 0; j < na; j++)
		for (int k = 0; k < 3; k++)
			put(o,
			    "uproxy_connections_limited_total{listener=\"%s\",limit=\"%s\"} "
			    "%" PRIu64 "\n",
			    agg[j].name, limits[k], agg[j].st.limited[k]);
	head(o, "uproxy_sni_routed_total", "counter",
	     "Sessions whose pool was chosen by the TLS server name.");
	for (uint32_t j = 0; j < na; j++)
		put(o, "uproxy_sni_routed_total{listener=\"%s\"} %" PRIu64 "\n", agg[j].name,
		    agg[j].st.sni_routed);
}

size_t stats_render(char *buf, size_t len, const struct stats_snapshot *snaps, int n)
{
	struct out o = { .buf = buf, .len = len, .pos = 0 };
	uint64_t cum = 0;

	if (len > 0)
		buf[0] = '\0';
	head(&o, "uproxy_workers", "gauge", "Worker threads, by event backend.");
	put(&o, "uproxy_workers{backend=\"%s\"} %d\n",
	    n > 0 && snaps[0].ls.backend != NULL ? snaps[0].ls.backend : "none", n);
	listener_series(&o, snaps, n);
	counter(&o, "uproxy_upstream_connect_attempts_total", "Upstream connects started.",
		SUM(st.connect_attempts));
	counter(&o, "uproxy_upstream_connect_failures_total",
		"Upstream connects that failed or timed out.", SUM(st.connect_errors));
	head(&o, "uproxy_upstream_connect_duration_seconds", "histogram",
	     "Time from upstream socket creation to an established connection.");
	for (int b = 0; b <= STATS_CONNECT_BUCKETS; b++) {
		cum += SUM(st.connect_hist[b]);
		if (b < STATS_CONNECT_BUCKETS)
			put(&o,
			    "uproxy_upstream_connect_duration_seconds_bucket{le=\"%g\"} %" PRIu64
			    "\n",
			    stats_connect_bounds_us[b] / 1e6, cum);
		else
			put(&o,
			    "uproxy_upstream_connect_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64
			    "\n",
			    cum);
	}
	put(&o, "uproxy_upstream_connect_duration_seconds_sum %.6f\n",
	    SUM(st.connect_sum_us) / 1e6);
	put(&o, "uproxy_upstream_connect_duration_seconds_count %" PRIu64 "\n", cum);

	/* Per pool and upstream address: sessions summed over workers; a worker that sees it
	 * down makes it down. */
	{
		static __thread struct stats_backend agg[BACKEND_MAX];
		static __thread char pname[BACKEND_MAX][STATS_NAME_MAX];
		static __thread struct stats_pool pagg[STATS_MAX_POOLS];
		uint32_t na = 0, np = 0;
		char a[ADDR_STRLEN];

		for (int w = 0; w < n; w++) {
			for (uint32_t i = 0; i < snaps[w].nbackends; i++) {
				const struct stats_backend *b = &snaps[w].backends[i];
				const char *pn = b->pool < snaps[w].npools
							 ? snaps[w].pools[b->pool].name
							 : "?";
				uint32_t j = 0;

				while (j < na && !(addr_equal(&agg[j].addr, &b->addr) &&
						   strcmp(pname[j], pn) == 0))
					j++;
				if (j == na) {
					if (na == BACKEND_MAX)
						continue;
					agg[na] =
						(struct stats_backend){ .addr = b->addr, .up = 1 };
					snprintf(pname[na], STATS_NAME_MAX, "%s", pn);
					na++;
				}
				agg[j].active += b->active;
				agg[j].up &= b->up;
			}
			for (uint32_t i = 0; i < snaps[w].npools; i++) {
				uint32_t j = 0;

				while (j < np && strcmp(pagg[j].name, snaps[w].pools[i].name) != 0)
					j++;
				if (j == np) {
					if (np == STATS_MAX_POOLS)
						continue;
					pagg[np++] = snaps[w].pools[i];
				}
				pagg[j].on_backup |= snaps[w].pools[i].on_backup;
			}
		}
		head(&o, "uproxy_upstream_up", "gauge",
		     "1 if the upstream is taking sessions, 0 if down.");
		for (uint32_t j = 0; j < na; j++)
			put(&o, "uproxy_upstream_up{pool=\"%s\",upstream=\"%s\"} %d\n", pname[j],
			    addr_format(&agg[j].addr, a, sizeof(a)), agg[j].up ? 1 : 0);
		head(&o, "uproxy_upstream_active_sessions", "gauge",
		     "Sessions on each upstream now.");
		for (uint32_t j = 0; j < na; j++)
			put(&o,
			    "uproxy_upstream_active_sessions{pool=\"%s\",upstream=\"%s\"} %" PRIu32
			    "\n",
			    pname[j], addr_format(&agg[j].addr, a, sizeof(a)), agg[j].active);
		head(&o, "uproxy_pool_backup_active", "gauge",
		     "1 while every primary upstream of the pool is down and its backups serve.");
		for (uint32_t j = 0; j < np; j++)
			put(&o, "uproxy_pool_backup_active{pool=\"%s\"} %d\n", pagg[j].name,
			    pagg[j].on_backup ? 1 : 0);
	}
	head(&o, "uproxy_config_reloads_total", "counter",
	     "SIGHUP configuration reloads, by result (failed: the old configuration kept).");
	put(&o, "uproxy_config_reloads_total{result=\"ok\"} %" PRIu64 "\n",
	    __atomic_load_n(&stats_reloads[0], __ATOMIC_RELAXED));
	put(&o, "uproxy_config_reloads_total{result=\"failed\"} %" PRIu64 "\n",
	    __atomic_load_n(&stats_reloads[1], __ATOMIC_RELAXED));
	counter(&o, "uproxy_buffer_ring_exhausted_total",
		"Receives that found the provided-buffer ring empty.", SUM(st.buf_exhausted));
	counter(&o, "uproxy_fallback_receives_total",
		"Receives into a session's own fallback buffer because the shared pool was low.",
		SUM(st.fallback_recvs));
	counter(&o, "uproxy_backpressure_pauses_total",
		"Receives paused because the other side was not reading.", SUM(st.backpressure));
	counter(&o, "uproxy_ring_enters_total", "System calls that submit to or wait on the ring.",
		SUM(ls.enters));
	counter(&o, "uproxy_ring_submissions_total", "SQEs submitted to the rings.",
		SUM(ls.submitted));
	counter(&o, "uproxy_ring_cqes_total", "CQEs handled.", SUM(ls.cqes));
	counter(&o, "uproxy_ring_cq_overflows_total",
		"Completion-queue overflows seen and reaped from the kernel's backlog.",
		SUM(ls.cq_overflow));
	counter(&o, "uproxy_ring_cq_lost_total",
		"Completions the kernel dropped on overflow (should be 0).", SUM(ls.cq_lost));
	counter(&o, "uproxy_ring_enter_retries_total",
		"Transient submit/wait failures (EINTR, EAGAIN, ENOMEM, EBUSY) retried.",
		SUM(ls.enter_retries));
	counter(&o, "uproxy_ring_sq_backlog_total",
		"SQEs that waited in user space because the SQ was full and a submit failed.",
		SUM(ls.sq_backlog));
	counter(&o, "uproxy_stale_cqes_total", "Completions dropped for a reused slot.",
		SUM(st.stale_cqes));
	counter(&o, "uproxy_accept_errors_total", "Failed accepts.", SUM(st.accept_errors));
	counter(&o, "uproxy_access_log_dropped_total",
		"Access-log lines dropped because the log could not keep up.", SUM(st.log_dropped));
	return o.pos;
}
