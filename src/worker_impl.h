/* worker_impl: what the worker's own files (worker.c, accept.c, slab.c, health.c, mailbox.c)
 * share. Private to src/: the rest of the program sees include/uproxy/worker.h. */
#ifndef UPROXY_WORKER_IMPL_H
#define UPROXY_WORKER_IMPL_H

#include "uproxy/worker.h"

/* Tag sides of worker-level requests on a listener, and of their cancels (OP_CANCEL_W). */
enum { ACC_MULTI = 0, ACC_SINGLE = 1 };
enum { CW_MULTI = 0, CW_SINGLE = 1, CW_STOP_CANCEL = 4, CW_STOP_CLOSE = 5 };

/* slab.c: the session slots. */
struct session *slab_alloc(struct worker *w);
/* Does what a session event asked of the worker (give the slot back, pause accepting). */
void slab_outcome(struct worker *w, struct session *s, unsigned int out);

/* accept.c */
void accept_update(struct worker *w);
void accept_backoff(struct worker *w);
void accept_done(struct worker *w, const struct loop_cqe *c);

/* health.c: active health checks (--health-interval): probes every upstream and arms the next
 * round's timer. */
void health_tick(struct worker *w);
void health_done(struct worker *w, const struct loop_cqe *c);

/* mailbox.c: the control thread's requests, read when the eventfd fires. */
void mailbox_take(struct worker *w);

/* worker.c */
/* Arms (or re-arms) one of the worker's deadlines ms from now. */
void worker_timer_arm(struct worker *w, enum worker_timer k, uint32_t ms);
int worker_pool_apply(struct worker *w, const struct backend_spec *specs, int n);
void worker_stop(struct worker *w, int signo);
void worker_close_all(struct worker *w);

#endif
