/* health: active health checks (--health-interval): a TCP connect to every upstream of a pool
 * each interval, through the loop; and the log lines when a pool moves to its backups and back. A
 * result counts only for the upstream its id named when the probe started (the id's generation):
 * never for one that reused the id since. */
#include "worker_impl.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

enum { PROBE_SOCKET = 0, PROBE_CONNECT = 1, PROBE_TIMEOUT = 2, PROBE_CLOSE = 3 };

static inline uint64_t ptag(uint32_t p, uint32_t id, uint32_t gen, unsigned int kind)
{
	return tag_make((p << TAG_POOL_SHIFT) | id, gen, kind, OP_PROBE);
}

/* Starts a connect probe to every member of pool p without one in flight. */
static void health_round(struct worker *w, uint32_t p)
{
	struct upool *u = &w->pools[p];

	for (uint32_t id = 0; id < backend_slots(u->bp); id++) {
		struct backend_info bi;
		int fam;

		if (u->probes[id].busy || backend_info(u->bp, id, &bi) < 0 || bi.removed)
			continue;
		u->probes[id].busy = true;
		u->probes[id].fd = -1;
		u->refs++; /* the pool stays until the probe is done */
		fam = bi.addr.u.sa.sa_family;
		loop_socket(w->env.loop, fam, SOCK_STREAM | SOCK_CLOEXEC,
			    fam == AF_UNIX ? 0 : IPPROTO_TCP,
			    ptag(p, id, u->bgen[id], PROBE_SOCKET));
	}
}

void health_done(struct worker *w, const struct loop_cqe *c)
{
	uint32_t p = tag_slot(c->tag) >> TAG_POOL_SHIFT;
	uint32_t id = tag_slot(c->tag) & ((1u << TAG_POOL_SHIFT) - 1), gen = tag_gen(c->tag);
	struct upool *u = &w->pools[p];
	struct probe *pr = &u->probes[id];
	/* The probe was started for the upstream this id named then: if SIGHUP or re-resolution
	 * gave the id to another address since, its result says nothing about the new one. */
	bool current = gen == u->bgen[id] && !u->retired;
	struct backend_info bi;
	char buf[ADDR_STRLEN];
	int res = c->res;

	switch (tag_side(c->tag)) {
	case PROBE_SOCKET:
		if (res < 0) {
			pr->busy = false;
			upool_put(w, p);
			return;
		}
		pr->fd = res;
		if (w->stopping || !current || backend_info(u->bp, id, &bi) < 0 || bi.removed) {
			loop_close(w->env.loop, pr->fd, ptag(p, id, gen, PROBE_CLOSE));
			pr->fd = -1;
			return;
		}
		loop_connect_timeout(w->env.loop, pr->fd, &u->baddr[id].u.sa, u->baddr[id].len,
				     u->cfg.connect_timeout_ms, ptag(p, id, gen, PROBE_CONNECT),
				     ptag(p, id, gen, PROBE_TIMEOUT));
		return;
	case PROBE_CONNECT:
		w->env.backends_dirty = true;
		if (current && backend_info(u->bp, id, &bi) == 0 && !bi.removed &&
		    backend_set_up(u->bp, id, res == 0))
			log_warn("worker %d: health check: upstream %s is %s%s%s (pool %s)", w->id,
				 addr_format(&u->baddr[id], buf, sizeof(buf)),
				 res == 0 ? "up" : "down (",
				 res == 0 ? "" : strerror(res == -ECANCELED ? ETIMEDOUT : -res),
				 res == 0 ? "" : ")", u->cfg.name);
		if (current)
			upool_watch_backup(u, id, w->id);
		loop_close(w->env.loop, pr->fd, ptag(p, id, gen, PROBE_CLOSE));
		pr->fd = -1;
		return;
	case PROBE_CLOSE:
		pr->busy = false;
		upool_put(w, p);
		return;
	default: /* PROBE_TIMEOUT */
		return;
	}
}

void health_tick(struct worker *w, uint32_t p)
{
	health_round(w, p);
	timer_arm(w->env.wheel, &w->pools[p].health,
		  w->env.now_ms + w->pools[p].cfg.health_interval_ms);
}
