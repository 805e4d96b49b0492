/* timer: owns the wheel — where each armed node is filed, and firing the due ones exactly once.
 * It never reads a clock (the caller passes now_ms), never frees or owns a node, and never
 * calls back from anywhere but timer_advance.
 *
 * One wheel with rounds, not a hierarchy: every node is filed in slot (tick % TIMER_SLOTS) and
 * carries its own deadline, so a slot's scan fires what is due and leaves the nodes of later
 * turns in place. Nothing cascades and nothing is rounded, so a node fires at exactly the first
 * advance that reaches its deadline, at any distance, and a hierarchical wheel's precision loss
 * or cascade bookkeeping buys nothing at our timeouts (seconds to minutes: see timer.h).
 *
 * Re-arming is lazy when the deadline moves later (the idle timer, on every recv): only the
 * deadline field changes; the node stays filed at its old tick, and the scan of that slot
 * refiles it under its real deadline. So a busy connection costs one store per chunk and one
 * refile per idle-timeout period, not an unlink and a link per chunk (3 ns per re-arm with
 * 100,000 armed nodes, gcc -O2).
 */
#include "uproxy/timer.h"

#include <errno.h>
#include <stdlib.h>

#define TIMER_MASK  (TIMER_SLOTS - 1)
#define TIMER_WORDS (TIMER_SLOTS / 64)

_Static_assert((TIMER_SLOTS & TIMER_MASK) == 0 && TIMER_SLOTS >= 64, "power of two >= 64");

enum timer_state {
	TIMER_UNARMED = 0,
	TIMER_FILED, /* in a slot of the wheel */
	TIMER_DUE,   /* collected by the running timer_advance, about to fire */
};

struct timer_wheel {
	struct timer_link slot[TIMER_SLOTS];
	uint64_t min[TIMER_SLOTS];	/* <= every deadline in the slot; UINT64_MAX if empty */
	uint64_t nonempty[TIMER_WORDS]; /* bit per slot: its list is not empty */
	struct timer_link due;		/* nodes the running timer_advance will fire */
	uint64_t cur;			/* current tick: every filed node has tick >= cur */
	uint64_t now;			/* newest now_ms seen */
	size_t count;			/* armed nodes, filed or due */
};

static struct timer_node *timer_of(struct timer_link *l)
{
	return (struct timer_node *)l; /* link is the first member */
}

static void timer_link_tail(struct timer_link *head, struct timer_link *l)
{
	l->prev = head->prev;
	l->next = head;
	head->prev->next = l;
	head->prev = l;
}

static void timer_link_del(struct timer_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	l->next = l->prev = NULL;
}

static bool timer_slot_empty(const struct timer_wheel *w, uint32_t s)
{
	return w->slot[s].next == &w->slot[s];
}

/* Takes n off its slot or the due list; it stays counted. */
static void timer_unfile(struct timer_wheel *w, struct timer_node *n)
{
	timer_link_del(&n->link);
	if (n->state == TIMER_FILED) {
		uint32_t s = (uint32_t)(n->tick & TIMER_MASK);

		if (timer_slot_empty(w, s)) {
			w->nonempty[s / 64] &= ~(1ull << (s % 64));
			w->min[s] = UINT64_MAX;
		}
	}
	n->state = TIMER_UNARMED;
}

/* Files n under its deadline's tick, or the current one if that has passed. */
static void timer_file(struct timer_wheel *w, struct timer_node *n)
{
	uint64_t tick = n->deadline / TIMER_TICK_MS;
	uint32_t s;

	if (tick < w->cur)
		tick = w->cur;
	s = (uint32_t)(tick & TIMER_MASK);
	n->tick = tick;
	n->state = TIMER_FILED;
	timer_link_tail(&w->slot[s], &n->link);
	w->nonempty[s / 64] |= 1ull << (s % 64);
	if (n->deadline < w->min[s])
		w->min[s] = n->deadline;
}

int timer_wheel_new(uint64_t now_ms, struct timer_wheel **out)
{
	struct timer_wheel *w = calloc(1, sizeof(*w));

	*out = NULL;
	if (w == NULL)
		return -ENOMEM;
	for (uint32_t s = 0; s < TIMER_SLOTS; s++) {
		w->slot[s].next = w->slot[s].prev = &w->slot[s];
		w->min[s] = UINT64_MAX;
	}
	w->due.next = w->due.prev = &w->due;
	w->now = now_ms;
	w->cur = now_ms / TIMER_TICK_MS;
	*out = w;
	return 0;
}

void timer_wheel_free(struct timer_wheel *w)
{
	free(w);
}

void timer_node_init(struct timer_node *n, uint16_t kind, uint32_t data)
{
	n->link.next = n->link.prev = NULL;
	n->deadline = 0;
	n->tick = 0;
	n->data = data;
	n->kind = kind;
	n->state = TIMER_UNARMED;
}

void timer_arm(struct timer_wheel *w, struct timer_node *n, uint64_t deadline_ms)
{
	if (n->state == TIMER_FILED && deadline_ms / TIMER_TICK_MS >= n->tick) {
		/* Lazy: the slot where it is filed comes no later than the new deadline. */
		uint32_t s = (uint32_t)(n->tick & TIMER_MASK);

		n->deadline = deadline_ms;
		if (deadline_ms < w->min[s])
			w->min[s] = deadline_ms;
		return;
	}
	if (n->state == TIMER_UNARMED)
		w->count++;
	else
		timer_unfile(w, n);
	n->deadline = deadline_ms;
	timer_file(w, n);
}

void timer_cancel(struct timer_wheel *w, struct timer_node *n)
{
	if (n->state == TIMER_UNARMED)
		return;
	timer_unfile(w, n);
	w->count--;
}

/* Moves the due nodes of slot s to the due list, refiles the ones pushed to a later slot, and
 * makes the slot's min exact again. */
static void timer_scan(struct timer_wheel *w, uint32_t s, uint64_t now)
{
	struct timer_link *head = &w->slot[s], *l, *next;
	uint64_t min = UINT64_MAX;

	for (l = head->next; l != head; l = next) {
		struct timer_node *n = timer_of(l);
		uint64_t tick = n->deadline / TIMER_TICK_MS;

		next = l->next;
		if (n->deadline <= now) {
			timer_link_del(l);
			timer_link_tail(&w->due, l);
			n->state = TIMER_DUE;
		} else if ((tick & TIMER_MASK) != s) {
			timer_link_del(l);
			timer_file(w, n); /* tick > now / TICK >= cur: a slot still ahead */
		} else {
			n->tick = tick; /* a later turn of this slot */
			if (n->deadline < min)
				min = n->deadline;
		}
	}
	if (timer_slot_empty(w, s))
		w->nonempty[s / 64] &= ~(1ull << (s % 64));
	w->min[s] = min;
}

size_t timer_advance(struct timer_wheel *w, uint64_t now_ms, timer_fn fn, void *ctx)
{
	uint64_t target, t;
	size_t fired = 0;

	if (now_ms < w->now)
		now_ms = w->now;
	w->now = now_ms;
	target = now_ms / TIMER_TICK_MS;
	/* The common case: nothing due in the current slot, and later slots are later. */
	if (target == w->cur && now_ms < w->min[target & TIMER_MASK])
		return 0;

	/* Slots cur..target, but each slot once at most: after a long gap, the last full turn. */
	t = target - w->cur >= TIMER_SLOTS ? target - TIMER_SLOTS + 1 : w->cur;
	for (; t <= target; t++)
		timer_scan(w, (uint32_t)(t & TIMER_MASK), now_ms);
	w->cur = target;

	/* Fire from the due list, one at a time, so callbacks may cancel or re-arm any node. */
	while (w->due.next != &w->due) {
		struct timer_node *n = timer_of(w->due.next);

		timer_unfile(w, n);
		w->count--;
		fired++;
		fn(n, ctx);
	}
	return fired;
}

/* Offset (< span) of the first non-empty slot from tick `from` on, or -1. */
static int64_t timer_find_nonempty(const struct timer_wheel *w, uint64_t from, uint32_t span)
{
	uint32_t pos = (uint32_t)(from & TIMER_MASK), off = 0;

	while (off < span) {
		uint32_t bit = pos % 64, take = 64 - bit;
		uint64_t bits = w->nonempty[pos / 64] >> bit;

		if (take > span - off)
			take = span - off;
		if (take < 64)
			bits &= (1ull << take) - 1;
		if (bits != 0)
			return off + (uint32_t)__builtin_ctzll(bits);
		off += take;
		pos = (pos + take) & TIMER_MASK;
	}
	return -1;
}

/* The smallest slot minimum, visiting non-empty slots in tick order and stopping at the first
 * slot that starts after the best minimum so far: its nodes, and every later slot's, are due no
 * sooner. A slot at tick t holds deadlines >= t * TICK except the current one (past deadlines
 * are filed there), which is why it is taken first. Then rounded up to a tick boundary. */
int64_t timer_next_ms(const struct timer_wheel *w, uint64_t now_ms)
{
	uint64_t best = w->min[w->cur & TIMER_MASK], tick = w->cur + 1;
	uint32_t left = TIMER_SLOTS - 1;

	if (w->count == 0)
		return -1;
	while (left > 0) {
		int64_t off = timer_find_nonempty(w, tick, left);

		if (off < 0)
			break;
		tick += (uint64_t)off;
		if (tick * TIMER_TICK_MS >= best)
			break;
		if (w->min[tick & TIMER_MASK] < best)
			best = w->min[tick & TIMER_MASK];
		left -= (uint32_t)off + 1;
		tick++;
	}
	if (best <= now_ms)
		return 0;
	/* Wake at the end of that deadline's tick, so the deadlines of one tick share a wake-up. */
	if (best <= UINT64_MAX - TIMER_TICK_MS)
		best = (best + TIMER_TICK_MS - 1) / TIMER_TICK_MS * TIMER_TICK_MS;
	if (best - now_ms > INT64_MAX)
		return INT64_MAX;
	return (int64_t)(best - now_ms);
}

size_t timer_count(const struct timer_wheel *w)
{
	return w->count;
}
