/* accept: when the worker's listeners accept (multishot far from --max-conns, single-shot near
 * it, paused on EMFILE), and what happens to an accepted client. Every accepted client gets a
 * slot; none is ever turned away once accepted. */
#include "worker_impl.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "uproxy/util.h"

static void accept_cancel(struct worker *w, uint32_t v, int i, unsigned int kind)
{
	struct listener *l = &w->svcs[v].socks[i];

	loop_cancel(w->env.loop, tag_make(sock_tag_slot(v, i), 0, kind, OP_ACCEPT),
		    tag_make(sock_tag_slot(v, i), 0, kind == ACC_MULTI ? CW_MULTI : CW_SINGLE,
			     OP_CANCEL_W));
	if (kind == ACC_MULTI)
		l->cancel_multi = true;
	else
		l->cancel_single = true;
	w->misc_inflight++;
}

/* Brings every listener to the wanted state. Far from --max-conns a multishot accept takes
 * connections as fast as they come; a burst can never exceed the listen backlog, so once fewer
 * than WORKER_MULTISHOT_MIN_FREE slots are free, single-shot accepts (one per listener, never
 * more than free slots) take over and no accepted client ever has to be turned away. */
void accept_update(struct worker *w)
{
	bool want = !w->stopping && !w->accept_backoff;
	uint32_t used = w->active + w->singles;
	uint32_t free = w->max_sessions > used ? w->max_sessions - used : 0;

	for (uint32_t k = 0; k < w->naccepting; k++) {
		uint32_t v = w->accepting[k];
		struct svc *sv = &w->svcs[v];

		for (int i = 0; i < sv->nsocks; i++) {
			struct listener *l = &sv->socks[i];

			if (l->fd < 0)
				continue;
			if (!want) {
				if (w->stopping)
					continue; /* stop() cancels everything on the fd */
				if (l->multi_armed && !l->cancel_multi)
					accept_cancel(w, v, i, ACC_MULTI);
				if (l->single_armed && !l->cancel_single)
					accept_cancel(w, v, i, ACC_SINGLE);
				continue;
			}
			if (free >= WORKER_MULTISHOT_MIN_FREE) {
				if (!l->multi_armed && !l->single_armed) {
					loop_accept_multishot(w->env.loop, l->fd,
							      tag_make(sock_tag_slot(v, i), 0,
								       ACC_MULTI, OP_ACCEPT));
					l->multi_armed = true;
					w->misc_inflight++;
				}
				continue;
			}
			if (l->multi_armed) {
				if (!l->cancel_multi)
					accept_cancel(w, v, i, ACC_MULTI);
				continue;
			}
			if (!l->single_armed && free > 0) {
				loop_accept(
					w->env.loop, l->fd,
					tag_make(sock_tag_slot(v, i), 0, ACC_SINGLE, OP_ACCEPT));
				l->single_armed = true;
				w->singles++;
				w->misc_inflight++;
				free--;
			}
		}
	}
}

void accept_backoff(struct worker *w)
{
	if (w->accept_backoff)
		return;
	w->accept_backoff = true;
	w->st.accept_backoffs++;
	worker_timer_arm(w, TIMER_ACCEPT_BACKOFF, WORKER_ACCEPT_BACKOFF_MS);
}

void accept_done(struct worker *w, const struct loop_cqe *c)
{
	uint32_t v = tag_svc(c->tag);
	struct listener *l = &w->svcs[v].socks[tag_sock(c->tag)];
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

		if (loop_fault_session_start(w->env.loop)) {
			/* Fault injection only: session set-up "ran out of memory"; RST. */
			sock_linger_rst(res);
			close(res);
			w->st.accept_overflow++;
			w->svcs[v].st.overflow++;
			return;
		}
		/* A client accepted while the listeners are being closed for a drain is served
		 * like the others (it drains with them): dropping it would reset a connection the
		 * kernel already handed over, which a zero-downtime restart must never do. Only
		 * once every session is being closed (drain deadline, second signal) is it
		 * refused. */
		s = w->closing_all || !w->svcs[v].used ? NULL : slab_alloc(w);

		if (s == NULL) {
			/* Closing everything; or a multishot burst larger than the listen backlog,
			 * which accept_update's margin makes impossible in practice. */
			close(res);
			w->st.accept_overflow++;
			w->svcs[v].st.overflow++;
			return;
		}
		w->st.accepted++;
		session_start(&w->env, s, res, v);
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
		accept_backoff(w);
		return;
	}
	/* ECONNABORTED and friends concern one connection only: accept_update re-arms. */
	log_debug("accept failed: %s", strerror(-res));
}
