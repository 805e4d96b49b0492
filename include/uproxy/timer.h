/* timer: deadlines (connect, idle, half-close) on a timer wheel of intrusive nodes. The caller
 * tells it the time and arms one ring timeout from timer_next_ms; it never reads a clock,
 * never does I/O, and never allocates outside timer_wheel_new. */
#ifndef UPROXY_TIMER_H
#define UPROXY_TIMER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Width of one wheel slot. Firing is exact (a node fires at the first timer_advance whose
 * now_ms reaches its deadline), but timer_next_ms rounds its answer up to a tick boundary so
 * that deadlines within one tick share a wake-up. 10 ms: at most 100 timer wake-ups a second
 * however many sessions time out, each at most 10 ms late, for timeouts of seconds (connect,
 * half-close) to minutes (idle, 600 s by default). */
#define TIMER_TICK_MS 10u

/* Slots in the wheel (a power of two): one turn is 4096 x 10 ms = 40.96 s, so connect and
 * half-close deadlines are seen once; a 600 s idle deadline is compared ~15 times in its life.
 * 96 KiB per wheel (list head and minimum deadline per slot). Any deadline works: later ones
 * just wait more turns. */
#define TIMER_SLOTS 4096u

/* Intrusive link; the first member of timer_node. */
struct timer_link {
	struct timer_link *next, *prev;
};

/* Embed one per deadline in the owner (e.g. the session) and find the owner again with
 * container_of or the data field. Initialise with timer_node_init before first use. */
struct timer_node {
	struct timer_link link;
	uint64_t deadline; /* absolute ms, as given to timer_arm */
	uint64_t tick;	   /* the slot's tick where it is filed: <= deadline / TICK (internal) */
	uint32_t data;	   /* the caller's, e.g. a session slot */
	uint16_t kind;	   /* the caller's, e.g. which deadline this is */
	uint8_t state;	   /* internal: unarmed, on the wheel, or due in the running advance */
};

struct timer_wheel;

/* Called once for each node whose deadline has passed; the node is already unarmed. The
 * callback may arm or cancel any node, this one included. */
typedef void (*timer_fn)(struct timer_node *n, void *ctx);

/* Creates an empty wheel whose clock starts at now_ms. Returns 0 or -ENOMEM. */
int timer_wheel_new(uint64_t now_ms, struct timer_wheel **out);
/* Frees the wheel; it does not touch nodes still armed (their owners may be gone already). */
void timer_wheel_free(struct timer_wheel *w);

void timer_node_init(struct timer_node *n, uint16_t kind, uint32_t data);

/* Arms n to fire at deadline_ms (absolute, the caller's clock), whether or not it was armed.
 * O(1). Pushing an armed deadline later — the idle timer on every received chunk — is lazy:
 * it stores the new deadline and leaves the node where it is filed; the wheel refiles it when
 * it reaches that slot. A deadline already passed fires at the next timer_advance (not the
 * running one, if called from a callback: a node re-armed to "now" cannot loop). */
void timer_arm(struct timer_wheel *w, struct timer_node *n, uint64_t deadline_ms);

/* Unarms n; nothing happens if it is not armed. O(1). */
void timer_cancel(struct timer_wheel *w, struct timer_node *n);

static inline bool timer_armed(const struct timer_node *n)
{
	return n->link.next != NULL;
}

/* Fires, in no particular order, every armed node whose deadline <= now_ms, each exactly
 * once, calling fn(node, ctx) for each after unarming it. A node cancelled by an earlier
 * callback of the same call does not fire. Returns how many fired. now_ms must not go
 * backwards (an older value is treated as the newest seen); do not call it from a callback. */
size_t timer_advance(struct timer_wheel *w, uint64_t now_ms, timer_fn fn, void *ctx);

/* Milliseconds from now_ms until the end of the tick (TIMER_TICK_MS) holding the earliest
 * deadline, 0 if one is already due, or -1 when nothing is armed: never later than the earliest
 * deadline by a tick or more. It can be early when a node was cancelled or pushed later since
 * its slot was last scanned: the timer_advance at that time fires nothing but refiles (at most
 * once per such change), and the next answer is right again. Arm one ring timeout with it after
 * every timer_advance. Cost: a bitmap word per 64 slots, a look per non-empty slot passed. */
int64_t timer_next_ms(const struct timer_wheel *w, uint64_t now_ms);

/* Armed nodes. */
size_t timer_count(const struct timer_wheel *w);

#endif
