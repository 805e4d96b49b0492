/* health: active health checks (--health-interval): a TCP connect to every upstream each
 * interval, through the loop. A result counts only for the upstream its id named when the probe
 * started (the id's generation): never for one that reused the id since. */
#include "worker_impl.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

enum { PROBE_SOCKET = 0, PROBE_CONNECT = 1, PROBE_TIMEOUT = 2, PROBE_CLOSE = 3 };

static void health_arm(struct worker *w)
{
	worker_timer_arm(w, TIMER_HEALTH, w->env.cfg->health_interval_ms);
}

/* Starts a TCP connect probe to every member without one in flight. */
static void health_round(struct worker *w)
{
	for (uint32_t id = 0; id < backend_slots(w->env.pool); id++) {
		struct backend_info bi;

		if (w->probes[id].busy || backend_info(w->env.pool, id, &bi) < 0 || bi.removed)
			continue;
		w->probes[id].busy = true;
		w->probes[id].fd = -1;
		loop_socket(w->env.loop, bi.addr.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC,
			    IPPROTO_TCP, tag_make(id, w->bgen[id], PROBE_SOCKET, OP_PROBE));
	}
}

void health_done(struct worker *w, const struct loop_cqe *c)
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
		if (w->stopping || !current || backend_info(w->env.pool, id, &bi) < 0 ||
		    bi.removed) {
			loop_close(w->env.loop, p->fd, tag_make(id, gen, PROBE_CLOSE, OP_PROBE));
			p->fd = -1;
			return;
		}
		loop_connect_timeout(w->env.loop, p->fd, &w->baddr[id].u.sa, w->baddr[id].len,
				     w->env.cfg->connect_timeout_ms,
				     tag_make(id, gen, PROBE_CONNECT, OP_PROBE),
				     tag_make(id, gen, PROBE_TIMEOUT, OP_PROBE));
		return;
	case PROBE_CONNECT:
		w->env.backends_dirty = true;
		if (current && backend_info(w->env.pool, id, &bi) == 0 && !bi.removed &&
		    backend_set_up(w->env.pool, id, res == 0))
			log_warn("worker %d: health check: upstream %s is %s%s%s", w->id,
				 addr_format(&w->baddr[id], buf, sizeof(buf)),
				 res == 0 ? "up" : "down (",
				 res == 0 ? "" : strerror(res == -ECANCELED ? ETIMEDOUT : -res),
				 res == 0 ? "" : ")");
		loop_close(w->env.loop, p->fd, tag_make(id, gen, PROBE_CLOSE, OP_PROBE));
		p->fd = -1;
		return;
	case PROBE_CLOSE:
		p->busy = false;
		return;
	default: /* PROBE_TIMEOUT */
		return;
	}
}

void health_tick(struct worker *w)
{
	health_round(w);
	health_arm(w);
}
