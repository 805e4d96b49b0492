/* Unit tests for the timer wheel: exact-once firing at the first advance that reaches a
 * deadline, cancel and re-arm (lazily later, eagerly earlier, from callbacks), deadlines many
 * turns of the wheel away, timer_next_ms as an event loop uses it, and random workloads checked
 * against a brute-force list of deadlines. */
#include <criterion/criterion.h>
#include <stddef.h>
#include <string.h>

#include "uproxy/timer.h"

#define TURN_MS ((uint64_t)TIMER_SLOTS * TIMER_TICK_MS)

struct rec {
	struct timer_wheel *w;
	uint64_t now;
	size_t nfired;
	uint32_t fired[64]; /* data of the first 64 fired, in order */
	uint32_t hits[64];  /* times each data value fired */
	/* what the callback does to others: on firing data == trigger, act on victim */
	uint32_t trigger;
	struct timer_node *victim;
	uint64_t victim_deadline; /* 0: cancel it */
	uint64_t period;	  /* non-zero: re-arm the fired node this much later */
};

static void on_fire(struct timer_node *n, void *ctx)
{
	struct rec *r = ctx;

	cr_assert_not(timer_armed(n), "a firing node is unarmed first");
	if (r->nfired < 64)
		r->fired[r->nfired] = n->data;
	r->nfired++;
	if (n->data < 64)
		r->hits[n->data]++;
	if (r->victim != NULL && n->data == r->trigger) {
		if (r->victim_deadline == 0)
			timer_cancel(r->w, r->victim);
		else
			timer_arm(r->w, r->victim, r->victim_deadline);
	}
	if (r->period != 0)
		timer_arm(r->w, n, r->now + r->period);
}

static struct timer_wheel *mkwheel(uint64_t now)
{
	struct timer_wheel *w;

	cr_assert_eq(timer_wheel_new(now, &w), 0);
	return w;
}

static size_t adv(struct rec *r, uint64_t now)
{
	r->now = now;
	return timer_advance(r->w, now, on_fire, r);
}

Test(timer, fires_at_the_deadline_not_before)
{
	struct rec r = { .w = mkwheel(1000) };
	struct timer_node n;

	timer_node_init(&n, 7, 3);
	timer_arm(r.w, &n, 1234);
	cr_assert(timer_armed(&n));
	cr_assert_eq(timer_count(r.w), 1);
	for (uint64_t t = 1000; t < 1234; t++)
		cr_assert_eq(adv(&r, t), 0, "fired early at %lu", (unsigned long)t);
	cr_assert_eq(adv(&r, 1234), 1);
	cr_assert_eq(r.fired[0], 3);
	cr_assert_eq(n.kind, 7);
	cr_assert_not(timer_armed(&n));
	cr_assert_eq(timer_count(r.w), 0);
	cr_assert_eq(adv(&r, 5000), 0, "exactly once");
	timer_wheel_free(r.w);
}

Test(timer, fires_in_deadline_order_when_stepping)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node n[40];

	for (uint32_t i = 0; i < 40; i++) {
		timer_node_init(&n[i], 0, i);
		/* out of order, several per tick, some in the same ms */
		timer_arm(r.w, &n[i], 1 + (i * 37) % 40 * 3);
	}
	for (uint64_t t = 0; t <= 200; t++)
		adv(&r, t);
	cr_assert_eq(r.nfired, 40);
	for (size_t i = 1; i < 40; i++)
		cr_assert_leq(n[r.fired[i - 1]].deadline, n[r.fired[i]].deadline);
	for (int i = 0; i < 40; i++)
		cr_assert_eq(r.hits[i], 1);
	timer_wheel_free(r.w);
}

Test(timer, short_deadlines_and_past_ones)
{
	struct rec r = { .w = mkwheel(5005) };
	struct timer_node a, b, c;

	timer_node_init(&a, 0, 0);
	timer_node_init(&b, 0, 1);
	timer_node_init(&c, 0, 2);
	timer_arm(r.w, &a, 5006); /* 1 ms, same tick */
	timer_arm(r.w, &b, 5000); /* already passed */
	timer_arm(r.w, &c, 0);
	cr_assert_eq(timer_next_ms(r.w, 5005), 0);
	cr_assert_eq(adv(&r, 5005), 2);
	cr_assert_eq(timer_next_ms(r.w, 5005), 5, "the end of 5006's tick");
	cr_assert_eq(adv(&r, 5006), 1);
	cr_assert_eq(timer_next_ms(r.w, 5006), -1);
	timer_wheel_free(r.w);
}

Test(timer, cancel_before_expiry)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node n[3];

	for (uint32_t i = 0; i < 3; i++) {
		timer_node_init(&n[i], 0, i);
		timer_arm(r.w, &n[i], 100);
	}
	timer_cancel(r.w, &n[1]);
	timer_cancel(r.w, &n[1]); /* twice is harmless */
	cr_assert_not(timer_armed(&n[1]));
	cr_assert_eq(timer_count(r.w), 2);
	cr_assert_eq(adv(&r, 100), 2);
	cr_assert_eq(r.hits[1], 0);
	timer_cancel(r.w, &n[0]); /* after firing: unarmed already */
	cr_assert_eq(timer_count(r.w), 0);
	cr_assert_eq(timer_next_ms(r.w, 100), -1);
	timer_wheel_free(r.w);
}

Test(timer, rearm_later_is_lazy_and_exact)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node idle;
	uint64_t t;

	timer_node_init(&idle, 1, 9);
	timer_arm(r.w, &idle, 600000);
	/* a chunk every 7 ms for a minute pushes the idle deadline along */
	for (t = 7; t <= 60000; t += 7) {
		cr_assert_eq(adv(&r, t), 0);
		timer_arm(r.w, &idle, t + 600000);
	}
	t -= 7;
	cr_assert_eq(adv(&r, t + 599999), 0);
	cr_assert_eq(adv(&r, t + 600000), 1);
	cr_assert_eq(timer_count(r.w), 0);
	timer_wheel_free(r.w);
}

Test(timer, rearm_earlier_moves_it)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node n;

	timer_node_init(&n, 0, 0);
	timer_arm(r.w, &n, 600000);
	timer_arm(r.w, &n, 50);
	cr_assert_eq(timer_count(r.w), 1);
	cr_assert_leq(timer_next_ms(r.w, 0), 50);
	cr_assert_eq(adv(&r, 49), 0);
	cr_assert_eq(adv(&r, 50), 1);
	cr_assert_eq(adv(&r, 600000), 0);
	/* earlier, but within the tick where it is filed (the lazy path) */
	cr_assert_eq(adv(&r, 600100), 0);
	timer_arm(r.w, &n, 600108);
	timer_arm(r.w, &n, 600105);
	timer_arm(r.w, &n, 600101);
	cr_assert_leq(timer_next_ms(r.w, 600100), TIMER_TICK_MS);
	cr_assert_eq(adv(&r, 600100), 0);
	cr_assert_eq(adv(&r, 600101), 1);
	timer_wheel_free(r.w);
}

Test(timer, callback_rearms_itself)
{
	struct rec r = { .w = mkwheel(0), .period = 250 };
	struct timer_node n;

	timer_node_init(&n, 0, 0);
	timer_arm(r.w, &n, 250);
	for (uint64_t t = 1; t <= 10000; t++)
		adv(&r, t);
	cr_assert_eq(r.nfired, 40);
	cr_assert(timer_armed(&n));
	cr_assert_eq(n.deadline, 10250);
	timer_wheel_free(r.w);
}

Test(timer, rearm_to_now_in_callback_fires_on_the_next_advance)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node n;

	r.period = 0;
	timer_node_init(&n, 0, 0);
	r.victim = &n;
	r.trigger = 0;
	r.victim_deadline = 100; /* the node re-arms itself to a deadline already reached */
	timer_arm(r.w, &n, 100);
	cr_assert_eq(adv(&r, 100), 1, "no loop: once per advance");
	cr_assert(timer_armed(&n));
	cr_assert_eq(timer_next_ms(r.w, 100), 0);
	cr_assert_eq(adv(&r, 100), 1);
	r.victim = NULL;
	cr_assert_eq(adv(&r, 100), 1);
	cr_assert_eq(adv(&r, 100), 0);
	timer_wheel_free(r.w);
}

Test(timer, callback_cancels_or_moves_another_due_node)
{
	for (int mode = 0; mode < 2; mode++) {
		struct rec r = { .w = mkwheel(0) };
		struct timer_node a, b;

		timer_node_init(&a, 0, 0);
		timer_node_init(&b, 0, 1);
		timer_arm(r.w, &a, 40);
		timer_arm(r.w, &b, 40);
		/* whichever fires first acts on the other */
		r.trigger = 0;
		r.victim = &b;
		r.victim_deadline = mode == 0 ? 0 : 90;
		if (adv(&r, 50) == 2) { /* b fired first; redo with the roles fixed */
			cr_assert_eq(r.fired[0], 1);
			timer_wheel_free(r.w);
			continue;
		}
		cr_assert_eq(r.nfired, 1);
		cr_assert_eq(r.fired[0], 0);
		if (mode == 0) {
			cr_assert_not(timer_armed(&b));
			cr_assert_eq(timer_count(r.w), 0);
		} else {
			cr_assert_eq(adv(&r, 89), 0);
			cr_assert_eq(adv(&r, 90), 1);
			cr_assert_eq(r.fired[1], 1);
		}
		timer_wheel_free(r.w);
	}
}

Test(timer, callback_arms_a_new_node)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node a, b;

	timer_node_init(&a, 0, 0);
	timer_node_init(&b, 0, 1);
	timer_arm(r.w, &a, 10);
	r.trigger = 0;
	r.victim = &b;
	r.victim_deadline = 15;
	cr_assert_eq(adv(&r, 20), 1, "armed during the advance: fires on the next one");
	cr_assert_eq(adv(&r, 20), 1);
	cr_assert_eq(r.fired[1], 1);
	timer_wheel_free(r.w);
}

Test(timer, deadlines_across_turns_of_the_wheel)
{
	const uint64_t d[] = {
		TURN_MS - 1, TURN_MS, TURN_MS + 1, 2 * TURN_MS + 5, 10 * TURN_MS + 9,
		600000,	     3600000, 3600001,	   7200000 + 3,	    86400000ull * 2,
	};
	const size_t nd = sizeof(d) / sizeof(d[0]);

	/* Ascending; stepping 1 ms at a time around each deadline, one jump in between. */
	for (int start = 0; start < 3; start++) {
		uint64_t t0 = (uint64_t)start * 4567 + 3;
		struct rec r = { .w = mkwheel(t0) };
		struct timer_node n[16];

		for (uint32_t i = 0; i < nd; i++) {
			timer_node_init(&n[i], 0, i);
			timer_arm(r.w, &n[i], t0 + d[i]);
		}
		for (size_t i = 0; i < nd; i++) {
			uint64_t when = t0 + d[i];

			adv(&r, when - 2);
			cr_assert_eq(r.hits[i], 0, "deadline %zu fired early", i);
			adv(&r, when - 1);
			cr_assert_eq(r.hits[i], 0, "deadline %zu fired early", i);
			adv(&r, when);
			cr_assert_eq(r.hits[i], 1, "deadline %zu (+%lu ms) did not fire", i,
				     (unsigned long)d[i]);
		}
		cr_assert_eq(r.nfired, nd);
		timer_wheel_free(r.w);
	}
}

Test(timer, one_long_jump_fires_everything_due)
{
	struct rec r = { .w = mkwheel(0) };
	struct timer_node n[50];

	for (uint32_t i = 0; i < 50; i++) {
		timer_node_init(&n[i], 0, i);
		timer_arm(r.w, &n[i], 1 + (uint64_t)i * 150000); /* up to ~2 hours */
	}
	cr_assert_eq(adv(&r, 3000000), 20);		      /* 0..19 */
	cr_assert_eq(adv(&r, 3000000 + 5 * TURN_MS + 17), 2); /* 20, 21 */
	cr_assert_eq(adv(&r, 100000000), 28);
	for (int i = 0; i < 50; i++)
		cr_assert_eq(r.hits[i], 1);
	timer_wheel_free(r.w);
}

Test(timer, next_ms_bounds)
{
	struct timer_wheel *w = mkwheel(1000);
	struct timer_node a, b;

	timer_node_init(&a, 0, 0);
	timer_node_init(&b, 0, 1);
	cr_assert_eq(timer_next_ms(w, 1000), -1);
	timer_arm(w, &a, 2234);
	cr_assert_eq(timer_next_ms(w, 1000), 1240);
	cr_assert_eq(timer_next_ms(w, 2231), 9);
	timer_arm(w, &b, 1003);
	cr_assert_eq(timer_next_ms(w, 1000), 10);
	timer_arm(w, &b, 1010);
	cr_assert_eq(timer_next_ms(w, 1000), 10);
	timer_cancel(w, &b);
	timer_cancel(w, &a);
	cr_assert_eq(timer_next_ms(w, 1000), -1);
	timer_arm(w, &a, 1000 + 3600000);
	cr_assert_eq(timer_next_ms(w, 1000), 3600000, "many turns away, still exact");
	timer_arm(w, &b, 999);
	cr_assert_eq(timer_next_ms(w, 1000), 0, "already due");
	timer_wheel_free(w);
}

/* ---- random workloads against a brute-force list ---- */

#define NRAND 10000

struct model {
	struct timer_wheel *w;
	struct timer_node node[NRAND];
	uint64_t deadline[NRAND];
	bool armed[NRAND];
	uint64_t fired_at[NRAND];
	uint64_t now;
	uint64_t rng;
	size_t fired_now;
	bool in_callback_rearm;
};

static uint64_t mrand(struct model *m)
{
	uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Mostly seconds, some sub-tick, some an hour or more. */
static uint64_t random_delay(struct model *m)
{
	switch (mrand(m) % 8) {
	case 0:
		return 1 + mrand(m) % 20;
	case 1:
		return 3600000 + mrand(m) % 3600000;
	case 2:
		return 1 + mrand(m) % (3 * TURN_MS);
	default:
		return 1 + mrand(m) % 30000;
	}
}

static void model_arm(struct model *m, uint32_t i, uint64_t deadline)
{
	timer_arm(m->w, &m->node[i], deadline);
	m->deadline[i] = deadline;
	m->armed[i] = true;
}

static void model_fire(struct timer_node *n, void *ctx)
{
	struct model *m = ctx;
	uint32_t i = n->data;

	cr_assert_eq(n, &m->node[i]);
	cr_assert(m->armed[i], "node %u fired while not armed", i);
	cr_assert_leq(m->deadline[i], m->now, "node %u fired before its deadline", i);
	cr_assert_eq(n->deadline, m->deadline[i]);
	m->armed[i] = false;
	m->fired_at[i] = m->now;
	m->fired_now++;
	if (!m->in_callback_rearm)
		return;
	/* Callbacks disturb others: cancel one, re-arm one, and sometimes this one. */
	switch (mrand(m) % 4) {
	case 0: {
		uint32_t j = (uint32_t)(mrand(m) % NRAND);

		timer_cancel(m->w, &m->node[j]);
		m->armed[j] = false;
		break;
	}
	case 1:
		model_arm(m, (uint32_t)(mrand(m) % NRAND), m->now + random_delay(m));
		break;
	case 2:
		model_arm(m, i, m->now + random_delay(m));
		break;
	default:
		break;
	}
}

static void run_random(uint64_t seed, bool disturb)
{
	static struct model m;
	uint64_t total = 0;

	memset(&m, 0, sizeof(m));
	m.rng = seed;
	m.now = 1000000 + mrand(&m) % 1000000;
	m.in_callback_rearm = disturb;
	cr_assert_eq(timer_wheel_new(m.now, &m.w), 0);
	for (uint32_t i = 0; i < NRAND; i++) {
		timer_node_init(&m.node[i], (uint16_t)(i % 3), i);
		model_arm(&m, i, m.now + random_delay(&m));
	}
	for (int step = 0; step < 3000; step++) {
		size_t expect = 0, armed = 0;
		uint64_t r = mrand(&m) % 100, earliest = UINT64_MAX;
		int64_t next;

		/* Between advances: cancel, push later (lazy), pull earlier, arm fresh. */
		for (int k = 0; k < 5; k++) {
			uint32_t i = (uint32_t)(mrand(&m) % NRAND);

			switch (mrand(&m) % 4) {
			case 0:
				timer_cancel(m.w, &m.node[i]);
				m.armed[i] = false;
				break;
			case 1:
				if (m.armed[i]) {
					model_arm(&m, i, m.deadline[i] + mrand(&m) % 60000);
					break;
				}
				/* fall through */
			case 2:
				model_arm(&m, i, m.now + random_delay(&m));
				break;
			default:
				if (m.armed[i] && m.deadline[i] > m.now + 1) {
					uint64_t span = m.deadline[i] - m.now - 1;

					model_arm(&m, i, m.now + 1 + mrand(&m) % span);
				}
				break;
			}
		}
		for (uint32_t i = 0; i < NRAND; i++) {
			if (!m.armed[i])
				continue;
			armed++;
			earliest = m.deadline[i] < earliest ? m.deadline[i] : earliest;
		}
		cr_assert_eq(timer_count(m.w), armed);
		next = timer_next_ms(m.w, m.now);
		if (armed == 0) {
			cr_assert_eq(next, -1);
		} else {
			cr_assert_geq(next, 0);
			cr_assert_lt(m.now + (uint64_t)next,
				     (earliest > m.now ? earliest : m.now) + TIMER_TICK_MS,
				     "next_ms a tick or more after the earliest deadline");
		}

		/* Steps of 1 ms to a few seconds, now and then a long jump or none at all. */
		if (r < 5)
			m.now += 0;
		else if (r < 8)
			m.now += mrand(&m) % (2 * 3600000);
		else if (r < 60)
			m.now += 1 + mrand(&m) % 20;
		else
			m.now += 1 + mrand(&m) % 5000;
		for (uint32_t i = 0; i < NRAND; i++)
			expect += m.armed[i] && m.deadline[i] <= m.now;
		m.fired_now = 0;
		cr_assert_eq(timer_advance(m.w, m.now, model_fire, &m), m.fired_now);
		/* Without disturbance every due node fires now; with it, a callback may cancel or
		 * push back a due node before its turn, so fewer may fire. */
		if (disturb)
			cr_assert_leq(m.fired_now, expect);
		else
			cr_assert_eq(m.fired_now, expect, "step %d: %zu fired, %zu due", step,
				     m.fired_now, expect);
		/* Either way nothing still armed is due: none left late. */
		for (uint32_t i = 0; i < NRAND; i++)
			cr_assert(!m.armed[i] || m.deadline[i] > m.now, "node %u left due", i);
		total += m.fired_now;
	}
	cr_assert_gt(total, NRAND / 2);
	timer_wheel_free(m.w);
}

Test(timer, random_workload_matches_brute_force)
{
	run_random(1, false);
	run_random(2, false);
}

Test(timer, random_workload_with_callbacks_disturbing)
{
	run_random(3, true);
	run_random(4, true);
}

/* An event loop that sleeps exactly timer_next_ms: every node fires at its deadline (the
 * requirement is no later than a tick after), and without cancels or pushed deadlines the loop
 * never wakes for nothing, even for deadlines many turns of the wheel away. */
Test(timer, event_loop_driven_by_next_ms)
{
	static struct model m;
	int idle_wakes = 0;

	memset(&m, 0, sizeof(m));
	m.rng = 77;
	m.now = 123456;
	cr_assert_eq(timer_wheel_new(m.now, &m.w), 0);
	for (uint32_t i = 0; i < 2000; i++) {
		timer_node_init(&m.node[i], 0, i);
		model_arm(&m, i, m.now + random_delay(&m));
	}
	for (;;) {
		int64_t next = timer_next_ms(m.w, m.now);

		if (next < 0)
			break;
		m.now += (uint64_t)next;
		m.fired_now = 0;
		timer_advance(m.w, m.now, model_fire, &m);
		idle_wakes += m.fired_now == 0;
	}
	cr_assert_eq(idle_wakes, 0);
	for (uint32_t i = 0; i < 2000; i++) {
		cr_assert_geq(m.fired_at[i], m.deadline[i]);
		cr_assert_leq(m.fired_at[i], m.deadline[i] + TIMER_TICK_MS, "node %u late", i);
	}
	timer_wheel_free(m.w);
}

/* With deadlines pushed later on the way (lazy) the loop may wake early, but only to refile:
 * at most once per push, and never asked to wake at once for nothing. */
Test(timer, event_loop_with_pushed_deadlines)
{
	static struct model m;
	int idle_wakes = 0, pushes = 0;

	memset(&m, 0, sizeof(m));
	m.rng = 78;
	m.now = 5;
	cr_assert_eq(timer_wheel_new(m.now, &m.w), 0);
	for (uint32_t i = 0; i < 2000; i++) {
		timer_node_init(&m.node[i], 0, i);
		model_arm(&m, i, m.now + random_delay(&m));
	}
	for (int wakes = 0;; wakes++) {
		int64_t next = timer_next_ms(m.w, m.now);

		if (next < 0)
			break;
		m.now += (uint64_t)next;
		m.fired_now = 0;
		timer_advance(m.w, m.now, model_fire, &m);
		if (m.fired_now == 0) {
			cr_assert_gt(next, 0, "asked to wake at once for nothing");
			idle_wakes++;
		}
		if (wakes < 3000) { /* push a few deadlines later, lazily */
			for (int k = 0; k < 3; k++) {
				uint32_t i = (uint32_t)(mrand(&m) % 2000);

				if (m.armed[i]) {
					model_arm(&m, i, m.deadline[i] + 1 + mrand(&m) % 100000);
					pushes++;
				}
			}
		}
	}
	cr_assert_leq(idle_wakes, pushes, "%d wakes for nothing, %d pushes", idle_wakes, pushes);
	cr_assert_gt(pushes, 1000);
	for (uint32_t i = 0; i < 2000; i++)
		cr_assert_leq(m.fired_at[i], m.deadline[i] + TIMER_TICK_MS, "node %u late", i);
	timer_wheel_free(m.w);
}
