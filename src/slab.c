/* slab: a worker's session slots: a free list over one calloc'd array, and what happens when a
 * session says it is done. A slot goes back only once nothing is in flight for it (the
 * session returns SESSION_OUT_RELEASED), with its generation bumped so stale completions are
 * recognised. */
#include "worker_impl.h"

struct session *slab_alloc(struct worker *w)
{
	struct session *s;

	if (w->free_head == UINT32_MAX)
		return NULL;
	s = &w->env.slab[w->free_head];
	w->free_head = s->next_free;
	/* Relaxed atomic stores: the control thread reads the count for sd_notify STATUS=. */
	__atomic_store_n(&w->active, w->active + 1, __ATOMIC_RELAXED);
	return s;
}

/* The session has nothing in flight any more: its slot goes back to the free list. */
static void session_free(struct worker *w, struct session *s)
{
	w->st.closed[s->reason]++;
	w->svcs[s->svc].st.closed[s->reason]++;
	if (s->pool != UINT8_MAX)
		upool_put(w, s->pool);
	s->pool = UINT8_MAX;
	svc_put(w, s->svc);
	s->gen = (s->gen + 1) & TAG_GEN_MASK;
	s->next_free = w->free_head;
	w->free_head = session_slot(&w->env, s);
	__atomic_store_n(&w->active, w->active - 1, __ATOMIC_RELAXED);
}

/* Does what a session event asked of the worker. */
void slab_outcome(struct worker *w, struct session *s, unsigned int out)
{
	if (out & SESSION_OUT_NEED_FD)
		accept_backoff(w);
	if (out & SESSION_OUT_RELEASED)
		session_free(w, s);
}
