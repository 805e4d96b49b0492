/* Unit tests for backend: the four policies (exact round-robin sequences, least connections,
 * two random choices, consistent hashing under pool changes), passive and active health,
 * retries, session accounting, and pool updates keeping ids. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "uproxy/backend.h"

#define NCLIENTS 10000

static struct addr v4(uint32_t ip, uint16_t port)
{
	struct sockaddr_in in4 = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct addr a;

	in4.sin_addr.s_addr = htonl(ip);
	addr_from_sockaddr(&a, (struct sockaddr *)&in4, sizeof(in4));
	return a;
}

static struct addr v6(const char *ip, uint16_t port)
{
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
	struct addr a;

	cr_assert_eq(inet_pton(AF_INET6, ip, &in6.sin6_addr), 1);
	addr_from_sockaddr(&a, (struct sockaddr *)&in6, sizeof(in6));
	return a;
}

/* Backend i is 10.0.(i / 256).(i % 256):8000. */
static struct backend_spec spec(uint32_t i, uint32_t weight)
{
	struct backend_spec s = { .addr = v4(0x0a000000u + i, 8000), .weight = weight };

	return s;
}

static struct backend_pool *mkpool(enum backend_balance bal, uint32_t n, const uint32_t *weights)
{
	struct backend_spec specs[BACKEND_MAX];
	struct backend_opts o;
	struct backend_pool *p;

	backend_opts_defaults(&o);
	o.balance = bal;
	o.seed = 42;
	cr_assert_eq(backend_pool_new(&o, &p), 0);
	for (uint32_t i = 0; i < n; i++)
		specs[i] = spec(i, weights ? weights[i] : 0);
	cr_assert_eq(backend_pool_update(p, specs, (int)n), 0);
	return p;
}

static uint64_t rng_state = 12345;

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Random clients, one in four IPv6, each with a random port. */
static void random_clients(struct addr *c, int n)
{
	for (int i = 0; i < n; i++) {
		if (i % 4 == 3) {
			struct sockaddr_in6 in6 = { .sin6_family = AF_INET6 };
			uint64_t hi = rnd() | 1, lo = rnd();

			in6.sin6_port = (uint16_t)rnd();
			memcpy(&in6.sin6_addr.s6_addr[0], &hi, 8);
			memcpy(&in6.sin6_addr.s6_addr[8], &lo, 8);
			addr_from_sockaddr(&c[i], (struct sockaddr *)&in6, sizeof(in6));
		} else {
			c[i] = v4((uint32_t)rnd(), (uint16_t)rnd());
		}
	}
}

static int pick(struct backend_pool *p, const struct addr *client)
{
	return backend_pick(p, client ? &client->u.sa : NULL, 0, NULL, 0);
}

static struct addr clients[NCLIENTS];
static int before[NCLIENTS], after[NCLIENTS];

Test(backend, balance_names_round_trip)
{
	for (int i = 0; i < BALANCE__COUNT; i++) {
		enum backend_balance b;

		cr_assert_eq(backend_balance_parse(backend_balance_name(i), &b), 0);
		cr_assert_eq((int)b, i);
	}
	cr_assert_str_eq(backend_balance_name(BALANCE_RANDOM2), "random2");
	cr_assert_str_eq(backend_balance_name(BALANCE__COUNT), "?");
}

Test(backend, balance_parse_rejects_others)
{
	const char *bad[] = { "", "RoundRobin", "round-robin", "hash ", "random", "least" };
	enum backend_balance b;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(backend_balance_parse(bad[i], &b), -EINVAL, "'%s'", bad[i]);
	cr_assert_eq(backend_balance_parse(NULL, &b), -EINVAL);
}

Test(backend, new_rejects_bad_options)
{
	struct backend_opts o;
	struct backend_pool *p;

	backend_opts_defaults(&o);
	cr_assert_eq(o.fail_threshold, 3);
	cr_assert_eq(o.fail_timeout_ms, 10000);
	o.fail_threshold = 0;
	cr_assert_eq(backend_pool_new(&o, &p), -EINVAL);
	cr_assert_null(p);
	backend_opts_defaults(&o);
	o.balance = BALANCE__COUNT;
	cr_assert_eq(backend_pool_new(&o, &p), -EINVAL);
}

Test(backend, empty_pool_picks_nothing)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool(bal, 0, NULL);
		struct addr c = v4(0x01020304, 1);

		cr_assert_eq(pick(p, &c), -1);
		cr_assert_eq(backend_count(p), 0);
		cr_assert_eq(backend_slots(p), 0);
		backend_pool_free(p);
	}
}

static void expect_sequence(const uint32_t *w, uint32_t n, const char *seq)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, n, w);
	size_t len = strlen(seq);

	for (int cycle = 0; cycle < 5; cycle++) {
		for (size_t i = 0; i < len; i++) {
			int id = pick(p, NULL);

			cr_assert_eq(id, seq[i] - 'a', "cycle %d step %zu: got %c, want %c", cycle,
				     i, 'a' + id, seq[i]);
		}
	}
	backend_pool_free(p);
}

Test(backend, roundrobin_smooth_sequences)
{
	const uint32_t w31[] = { 3, 1 }, w511[] = { 5, 1, 1 }, w111[] = { 1, 1, 1 };

	expect_sequence(w31, 2, "aaba");
	expect_sequence(w511, 3, "aabacaa"); /* nginx's own example */
	expect_sequence(w111, 3, "abc");
}

Test(backend, roundrobin_exact_over_every_cycle)
{
	uint32_t w[16], total = 0;
	struct backend_pool *p;

	for (int i = 0; i < 16; i++) {
		w[i] = 1 + (uint32_t)(rnd() % BACKEND_WEIGHT_MAX);
		total += w[i];
	}
	p = mkpool(BALANCE_ROUNDROBIN, 16, w);
	for (int cycle = 0; cycle < 3; cycle++) {
		uint32_t got[16] = { 0 };

		for (uint32_t k = 0; k < total; k++)
			got[pick(p, NULL)]++;
		for (int i = 0; i < 16; i++)
			cr_assert_eq(got[i], w[i], "cycle %d backend %d: %u of %u", cycle, i,
				     got[i], w[i]);
	}
	backend_pool_free(p);
}

Test(backend, leastconn_ties_rotate)
{
	struct backend_pool *p = mkpool(BALANCE_LEASTCONN, 4, NULL);

	/* Nothing acquired: every backend ties at zero, so picks go round. */
	for (int i = 0; i < 12; i++)
		cr_assert_eq(pick(p, NULL), i % 4);
	backend_pool_free(p);
}

Test(backend, leastconn_follows_active_per_weight)
{
	const uint32_t w[] = { 1, 3 };
	struct backend_pool *p = mkpool(BALANCE_LEASTCONN, 2, w);
	struct backend_info a, b;

	for (int i = 0; i < 400; i++)
		cr_assert_eq(backend_acquire(p, (uint32_t)pick(p, NULL)), 0);
	backend_info(p, 0, &a);
	backend_info(p, 1, &b);
	cr_assert_eq(a.active + b.active, 400);
	cr_assert(a.active >= 99 && a.active <= 101, "weight 1 carries %u of 400", a.active);
	/* Sessions end on backend 1 only: new ones go there until it is even again. */
	for (int i = 0; i < 30; i++)
		cr_assert_eq(backend_release(p, 1), 0);
	for (int i = 0; i < 30; i++) {
		int id = pick(p, NULL);

		cr_assert_eq(id, 1, "pick %d went to %d", i, id);
		backend_acquire(p, (uint32_t)id);
	}
	backend_pool_free(p);
}

Test(backend, leastconn_equal_backends_share_evenly)
{
	struct backend_pool *p = mkpool(BALANCE_LEASTCONN, 7, NULL);
	uint32_t lo = UINT32_MAX, hi = 0;

	for (int i = 0; i < 7000; i++) {
		int id = pick(p, NULL);

		backend_acquire(p, (uint32_t)id);
		if (i % 3 == 0 && i < 6990) /* sessions end, on a backend of their own */
			backend_release(p, (uint32_t)((uint32_t)i * 5 % 7));
	}
	for (uint32_t i = 0; i < 7; i++) {
		struct backend_info bi;

		backend_info(p, i, &bi);
		lo = bi.active < lo ? bi.active : lo;
		hi = bi.active > hi ? bi.active : hi;
	}
	cr_assert_leq(hi - lo, 1, "active spread %u..%u", lo, hi);
	backend_pool_free(p);
}

Test(backend, random2_is_deterministic_per_seed)
{
	struct backend_pool *a = mkpool(BALANCE_RANDOM2, 9, NULL);
	struct backend_pool *b = mkpool(BALANCE_RANDOM2, 9, NULL);
	bool varied = false;
	int first = pick(a, NULL);

	cr_assert_eq(pick(b, NULL), first);
	for (int i = 0; i < 200; i++) {
		int x = pick(a, NULL);

		cr_assert_eq(pick(b, NULL), x);
		varied = varied || x != first;
	}
	cr_assert(varied);
	backend_pool_free(a);
	backend_pool_free(b);
}

Test(backend, random2_takes_the_less_loaded_of_two_distinct)
{
	struct backend_pool *p = mkpool(BALANCE_RANDOM2, 2, NULL);

	/* With two backends both are always the two choices: the idle one must win. */
	for (int i = 0; i < 5; i++)
		backend_acquire(p, 0);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(pick(p, NULL), 1);
	backend_pool_free(p);
}

Test(backend, random2_draws_by_weight_and_balances_load)
{
	const uint32_t w[] = { 1, 3 };
	struct backend_pool *p = mkpool(BALANCE_RANDOM2, 2, w);
	struct backend_pool *q = mkpool(BALANCE_RANDOM2, 16, NULL);
	uint32_t heavy = 0, lo = UINT32_MAX, hi = 0;

	/* No load: ties go to the first draw, which is weighted. */
	for (int i = 0; i < NCLIENTS; i++)
		heavy += pick(p, NULL) == 1;
	cr_assert(heavy > 7200 && heavy < 7800, "weight 3 of 4 drew %u of 10000", heavy);
	/* Under load, two choices keep 16 backends within a few sessions of each other. */
	for (int i = 0; i < 16000; i++)
		backend_acquire(q, (uint32_t)pick(q, NULL));
	for (uint32_t i = 0; i < 16; i++) {
		struct backend_info bi;

		backend_info(q, i, &bi);
		lo = bi.active < lo ? bi.active : lo;
		hi = bi.active > hi ? bi.active : hi;
	}
	cr_assert_leq(hi - lo, 4, "active spread %u..%u", lo, hi);
	backend_pool_free(p);
	backend_pool_free(q);
}

Test(backend, hash_uses_the_ip_not_the_port)
{
	struct backend_pool *p = mkpool(BALANCE_HASH, 10, NULL);
	bool spread[10] = { false };
	int n = 0;

	for (uint32_t i = 0; i < 200; i++) {
		struct addr c1 = v4(0xc0a80000u + i * 7919, 1000);
		struct addr c2 = v4(0xc0a80000u + i * 7919, 61000);
		int id = pick(p, &c1);

		cr_assert_eq(pick(p, &c2), id);
		cr_assert_eq(pick(p, &c1), id);
		spread[id] = true;
	}
	for (int i = 0; i < 10; i++)
		n += spread[i];
	cr_assert_eq(n, 10, "200 clients reached only %d of 10 backends", n);
	backend_pool_free(p);
}

Test(backend, hash_v4_mapped_v6_is_the_v4_client)
{
	struct backend_pool *p = mkpool(BALANCE_HASH, 10, NULL);
	char text[64];

	for (uint32_t i = 0; i < 100; i++) {
		uint32_t ip = 0x0b000000u + i * 104729;
		struct addr c4 = v4(ip, 5), c6;

		snprintf(text, sizeof(text), "::ffff:%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255,
			 (ip >> 8) & 255, ip & 255);
		c6 = v6(text, 7);
		cr_assert_eq(pick(p, &c6), pick(p, &c4), "%s", text);
	}
	backend_pool_free(p);
}

/* Picks a backend for every client; with ids mapped back to backend numbers through addr. */
static void map_clients(struct backend_pool *p, int *out)
{
	for (int i = 0; i < NCLIENTS; i++) {
		struct backend_info bi;
		int id = pick(p, &clients[i]);

		cr_assert_geq(id, 0);
		cr_assert_eq(backend_info(p, (uint32_t)id, &bi), 0);
		out[i] = (int)(ntohl(bi.addr.u.in4.sin_addr.s_addr) - 0x0a000000u);
	}
}

static void hash_remove_and_add(uint32_t n)
{
	struct backend_spec specs[16];
	struct backend_pool *p = mkpool(BALANCE_HASH, n, NULL);
	uint32_t gone = n / 2, moved = 0, back = 0;
	int m = 0;

	random_clients(clients, NCLIENTS);
	map_clients(p, before);
	for (uint32_t i = 0; i < n; i++) {
		if (i != gone)
			specs[m++] = spec(i, 1);
	}
	cr_assert_eq(backend_pool_update(p, specs, m), 0);
	map_clients(p, after);
	for (int i = 0; i < NCLIENTS; i++) {
		cr_assert_neq(after[i], (int)gone);
		if (before[i] != (int)gone)
			cr_assert_eq(after[i], before[i], "client %d of a remaining backend moved",
				     i);
		moved += after[i] != before[i];
	}
	cr_assert_leq(moved, 1.3 * NCLIENTS / n, "N=%u: %u of %d clients moved", n, moved,
		      NCLIENTS);
	cr_assert_geq(moved, 0.7 * NCLIENTS / n, "N=%u: only %u of %d moved", n, moved, NCLIENTS);

	/* Adding it back moves ~1/N again: exactly the clients it had, back to it. */
	specs[m++] = spec(gone, 1);
	cr_assert_eq(backend_pool_update(p, specs, m), 0);
	map_clients(p, after);
	for (int i = 0; i < NCLIENTS; i++) {
		cr_assert_eq(after[i], before[i], "client %d did not return", i);
		back += before[i] == (int)gone;
	}
	cr_assert_leq(back, 1.3 * NCLIENTS / n);
	cr_assert_geq(back, 0.7 * NCLIENTS / n);
	backend_pool_free(p);
}

Test(backend, hash_removing_one_of_n_moves_only_its_clients)
{
	hash_remove_and_add(5);
	hash_remove_and_add(10);
}

Test(backend, hash_adding_a_new_backend_only_takes_clients)
{
	struct backend_spec specs[8];
	struct backend_pool *p = mkpool(BALANCE_HASH, 7, NULL);
	uint32_t taken = 0;

	random_clients(clients, NCLIENTS);
	map_clients(p, before);
	for (uint32_t i = 0; i < 8; i++)
		specs[i] = spec(i, 1);
	cr_assert_eq(backend_pool_update(p, specs, 8), 0);
	map_clients(p, after);
	for (int i = 0; i < NCLIENTS; i++) {
		if (after[i] != before[i])
			cr_assert_eq(after[i], 7, "client %d moved between old backends", i);
		taken += after[i] == 7;
	}
	cr_assert(taken > 0.7 * NCLIENTS / 8 && taken < 1.3 * NCLIENTS / 8, "new took %u", taken);
	backend_pool_free(p);
}

Test(backend, hash_agrees_across_pools_listed_in_another_order)
{
	/* Two workers (or two uproxy instances) whose lists differ in order and ids must send a
	 * client to the same address. */
	struct backend_spec fwd[6], rev[6];
	struct backend_opts o;
	struct backend_pool *a, *b;

	backend_opts_defaults(&o);
	o.balance = BALANCE_HASH;
	cr_assert_eq(backend_pool_new(&o, &a), 0);
	o.seed = 999;
	cr_assert_eq(backend_pool_new(&o, &b), 0);
	for (uint32_t i = 0; i < 6; i++) {
		fwd[i] = spec(i, 1 + i % 3);
		rev[5 - i] = fwd[i];
	}
	cr_assert_eq(backend_pool_update(a, fwd, 6), 0);
	cr_assert_eq(backend_pool_update(b, rev, 6), 0);
	random_clients(clients, NCLIENTS);
	map_clients(a, before);
	map_clients(b, after);
	for (int i = 0; i < NCLIENTS; i++)
		cr_assert_eq(before[i], after[i], "client %d", i);
	backend_pool_free(a);
	backend_pool_free(b);
}

Test(backend, hash_weight_shifts_the_share)
{
	const uint32_t w[] = { 1, 3 };
	struct backend_pool *p = mkpool(BALANCE_HASH, 2, w);
	uint32_t light = 0;

	random_clients(clients, NCLIENTS);
	for (int i = 0; i < NCLIENTS; i++)
		light += pick(p, &clients[i]) == 0;
	cr_assert(light >= 2200 && light <= 2800, "weight 1 of 4 got %u of 10000", light);
	backend_pool_free(p);
}

Test(backend, hash_weight_change_moves_clients_one_way)
{
	uint32_t w[] = { 1, 1, 1, 1 };
	struct backend_spec specs[4];
	struct backend_pool *p = mkpool(BALANCE_HASH, 4, w);
	uint32_t share = 0;

	random_clients(clients, NCLIENTS);
	map_clients(p, before);
	for (int i = 0; i < 4; i++)
		specs[i] = spec((uint32_t)i, i == 0 ? 4 : 1); /* backend 0: 1/4 -> 4/7 */
	cr_assert_eq(backend_pool_update(p, specs, 4), 0);
	map_clients(p, after);
	for (int i = 0; i < NCLIENTS; i++) {
		if (after[i] != before[i])
			cr_assert_eq(after[i], 0, "client %d moved away from a lighter backend", i);
		share += after[i] == 0;
	}
	cr_assert(share > 5400 && share < 6000, "weight 4 of 7 got %u", share);
	backend_pool_free(p);
}

Test(backend, hash_without_client_spreads_round_robin)
{
	struct backend_pool *p = mkpool(BALANCE_HASH, 3, NULL);
	struct sockaddr_un un = { .sun_family = AF_UNIX };

	for (int i = 0; i < 6; i++)
		cr_assert_eq(pick(p, NULL), i % 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(backend_pick(p, (struct sockaddr *)&un, 0, NULL, 0), i % 3);
	backend_pool_free(p);
}

Test(backend, retries_skip_tried_backends)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool(bal, 4, NULL);
		struct addr c = v4(0x7f000001, 999);
		uint32_t tried[5];
		int n = 0, id;

		while ((id = backend_pick(p, &c.u.sa, 0, tried, n)) >= 0) {
			for (int i = 0; i < n; i++)
				cr_assert_neq(tried[i], (uint32_t)id, "%s repeated %d",
					      backend_balance_name(bal), id);
			cr_assert_lt(n, 4);
			tried[n++] = (uint32_t)id;
		}
		cr_assert_eq(n, 4, "%s tried %d of 4", backend_balance_name(bal), n);
		/* Ids that are not in the pool are ignored. */
		tried[0] = 4000;
		cr_assert_geq(backend_pick(p, &c.u.sa, 0, tried, 1), 0);
		backend_pool_free(p);
	}
}

Test(backend, hash_retries_are_consistent)
{
	struct backend_pool *p = mkpool(BALANCE_HASH, 10, NULL);
	struct addr c = v4(0x08080808, 1);
	uint32_t first = (uint32_t)pick(p, &c);
	int second = backend_pick(p, &c.u.sa, 0, &first, 1);

	for (int i = 0; i < 10; i++)
		cr_assert_eq(backend_pick(p, &c.u.sa, 0, &first, 1), second);
	/* A down first choice sends the client to the same second choice. */
	for (int i = 0; i < 3; i++)
		backend_report(p, first, false, 0);
	cr_assert_eq(pick(p, &c), second);
	backend_pool_free(p);
}

Test(backend, passive_health_threshold_and_half_open)
{
	struct backend_pool *p = mkpool(BALANCE_LEASTCONN, 2, NULL);
	struct backend_info bi;

	/* Backend 1 is busy, so leastconn picks 0 whenever 0 is eligible. */
	for (int i = 0; i < 5; i++)
		backend_acquire(p, 1);
	cr_assert_eq(backend_pick(p, NULL, 0, NULL, 0), 0);
	cr_assert_not(backend_report(p, 0, false, 1000));
	cr_assert_not(backend_report(p, 0, false, 1000));
	cr_assert(backend_report(p, 0, false, 1000), "third failure must mark it down");
	backend_info(p, 0, &bi);
	cr_assert_not(bi.up);
	cr_assert_eq(bi.fails, 3);
	cr_assert_eq(bi.down_until, 11000);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(backend_pick(p, NULL, 5000, NULL, 0), 1);
	/* A late failure inside the period changes nothing and does not extend it. */
	cr_assert_not(backend_report(p, 0, false, 6000));
	backend_info(p, 0, &bi);
	cr_assert_eq(bi.down_until, 11000);
	cr_assert_eq(backend_pick(p, NULL, 10999, NULL, 0), 1);

	/* Half-open: eligible again; a failure puts it straight back down. */
	cr_assert_eq(backend_pick(p, NULL, 11000, NULL, 0), 0);
	cr_assert_not(backend_report(p, 0, false, 11005), "still down: no state change");
	backend_info(p, 0, &bi);
	cr_assert_not(bi.up);
	cr_assert_eq(bi.down_until, 21005);
	cr_assert_eq(backend_pick(p, NULL, 12000, NULL, 0), 1);
	cr_assert_eq(backend_pick(p, NULL, 13000, NULL, 0), 1);

	/* Half-open again; one success brings it back with a clean count. */
	cr_assert_eq(backend_pick(p, NULL, 21005, NULL, 0), 0);
	cr_assert(backend_report(p, 0, true, 21010));
	backend_info(p, 0, &bi);
	cr_assert(bi.up);
	cr_assert_eq(bi.fails, 0);
	cr_assert_eq(bi.down_until, 0);
	cr_assert_not(backend_report(p, 0, true, 21010), "up stays up: no change");
	backend_pool_free(p);
}

Test(backend, success_resets_the_failure_count)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 1, NULL);

	for (int round = 0; round < 5; round++) {
		cr_assert_not(backend_report(p, 0, false, 0));
		cr_assert_not(backend_report(p, 0, false, 0));
		cr_assert_not(backend_report(p, 0, true, 0));
	}
	cr_assert_not(backend_report(p, 7, false, 0), "unknown id");
	backend_pool_free(p);
}

Test(backend, custom_threshold_and_timeout)
{
	struct backend_opts o;
	struct backend_pool *p;
	struct backend_spec s = spec(0, 1);
	struct backend_info bi;

	backend_opts_defaults(&o);
	o.fail_threshold = 1;
	o.fail_timeout_ms = 250;
	cr_assert_eq(backend_pool_new(&o, &p), 0);
	cr_assert_eq(backend_pool_update(p, &s, 1), 0);
	cr_assert(backend_report(p, 0, false, 100));
	backend_info(p, 0, &bi);
	cr_assert_eq(bi.down_until, 350);
	backend_pool_free(p);
}

Test(backend, active_checks_set_up_and_down)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);
	struct backend_info bi;

	cr_assert(backend_set_up(p, 1, false));
	cr_assert_not(backend_set_up(p, 1, false));
	/* Down by a check is never half-open: only the checker (or a success) brings it back. */
	for (int i = 0; i < 5; i++)
		cr_assert_eq(backend_pick(p, NULL, 1000000000ull, NULL, 0), 0);
	backend_report(p, 1, false, 0);
	backend_report(p, 1, false, 0);
	cr_assert(backend_set_up(p, 1, true));
	backend_info(p, 1, &bi);
	cr_assert(bi.up);
	cr_assert_eq(bi.fails, 0);
	cr_assert_not(backend_set_up(p, 1, true));
	cr_assert_not(backend_set_up(p, 9, true), "unknown id");
	backend_pool_free(p);
}

Test(backend, all_down_falls_back_to_the_soonest_back)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool(bal, 3, NULL);
		struct addr c = v4(0x01010101, 1);
		uint32_t tried = 1;

		for (int i = 0; i < 3; i++) {
			backend_report(p, 0, false, 300);
			backend_report(p, 1, false, 100);
			backend_report(p, 2, false, 200);
		}
		/* Down until 10300, 10100, 10200. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 500, NULL, 0), 1, "%s",
			     backend_balance_name(bal));
		/* Never one already tried. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 500, &tried, 1), 2);
		cr_assert_eq(backend_pick(p, &c.u.sa, 10150, &tried, 1), 2);
		/* Half-open at 10100: an ordinary pick. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 10150, NULL, 0), 1);
		backend_pool_free(p);
	}
}

Test(backend, fallback_never_takes_a_removed_backend)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);
	struct backend_spec s = spec(1, 1);

	backend_acquire(p, 0);
	for (int i = 0; i < 3; i++)
		backend_report(p, 1, false, 0);
	cr_assert_eq(backend_pool_update(p, &s, 1), 0); /* 0 removed, draining */
	cr_assert_eq(pick(p, NULL), 1, "the down member, not the removed one");
	backend_set_up(p, 0, true);
	cr_assert_eq(backend_pick(p, NULL, 0, (const uint32_t[]){ 1 }, 1), -1);
	backend_pool_free(p);
}

Test(backend, acquire_release_count_sessions)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);
	struct backend_info bi;

	cr_assert_eq(backend_acquire(p, 0), 0);
	cr_assert_eq(backend_acquire(p, 0), 0);
	backend_info(p, 0, &bi);
	cr_assert_eq(bi.active, 2);
	cr_assert_eq(backend_release(p, 0), 0);
	cr_assert_eq(backend_release(p, 0), 0);
	cr_assert_eq(backend_release(p, 0), -ENOENT, "release below zero");
	cr_assert_eq(backend_acquire(p, 2), -ENOENT);
	cr_assert_eq(backend_release(p, 99999), -ENOENT);
	backend_pool_free(p);
}

Test(backend, removed_backend_keeps_its_id_while_draining)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 3, NULL);
	struct backend_spec specs[3] = { spec(0, 1), spec(2, 1), spec(9, 1) };
	struct backend_info bi;
	char buf[ADDR_STRLEN];

	backend_acquire(p, 1);
	backend_acquire(p, 1);
	cr_assert_eq(backend_pool_update(p, specs, 2), 0);
	cr_assert_eq(backend_count(p), 2);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert(bi.removed);
	cr_assert_str_eq(addr_format(&bi.addr, buf, sizeof(buf)), "10.0.0.1:8000");
	for (int i = 0; i < 20; i++)
		cr_assert_neq(pick(p, NULL), 1);
	/* The id stays in use while a session holds it: a new backend gets another one. */
	cr_assert_eq(backend_pool_update(p, specs, 3), 0);
	cr_assert_eq(backend_info(p, 3, &bi), 0);
	cr_assert_str_eq(addr_format(&bi.addr, buf, sizeof(buf)), "10.0.0.9:8000");
	backend_report(p, 1, false, 0); /* reports for a draining backend are harmless */
	cr_assert_eq(backend_release(p, 1), 0);
	cr_assert_eq(backend_info(p, 1, &bi), 0, "one session still holds it");
	cr_assert_eq(backend_release(p, 1), 0);
	cr_assert_eq(backend_info(p, 1, &bi), -ENOENT, "last session gone: id freed");
	cr_assert_eq(backend_release(p, 1), -ENOENT);
	/* The freed id is reused by the next new address. */
	specs[1] = spec(5, 1);
	cr_assert_eq(backend_pool_update(p, specs, 3), 0);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_str_eq(addr_format(&bi.addr, buf, sizeof(buf)), "10.0.0.5:8000");
	cr_assert_eq(backend_info(p, 2, &bi), -ENOENT, "10.0.0.2 was dropped, idle");
	backend_pool_free(p);
}

Test(backend, removed_idle_backend_frees_its_id_at_once)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 3, NULL);
	struct backend_spec s = spec(0, 1);
	struct backend_info bi;

	cr_assert_eq(backend_pool_update(p, &s, 1), 0);
	cr_assert_eq(backend_info(p, 1, &bi), -ENOENT);
	cr_assert_eq(backend_info(p, 2, &bi), -ENOENT);
	cr_assert_eq(backend_slots(p), 1);
	backend_pool_free(p);
}

Test(backend, draining_backend_that_returns_is_a_member_again)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);
	struct backend_spec specs[2] = { spec(0, 1), spec(1, 1) };
	struct backend_info bi;

	backend_acquire(p, 1);
	cr_assert_eq(backend_pool_update(p, specs, 1), 0);
	cr_assert_eq(backend_pool_update(p, specs, 2), 0);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_not(bi.removed);
	cr_assert_eq(bi.active, 1);
	cr_assert_eq(backend_count(p), 2);
	backend_release(p, 1);
	cr_assert_eq(backend_info(p, 1, &bi), 0, "a member is never freed by a release");
	backend_pool_free(p);
}

Test(backend, update_keeps_ids_counters_and_health)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 3, NULL);
	struct backend_spec specs[3] = { spec(7, 1), spec(2, 5), spec(0, 1) };
	struct backend_info bi;

	for (int i = 0; i < 6; i++)
		pick(p, NULL);
	backend_acquire(p, 2);
	for (int i = 0; i < 3; i++)
		backend_report(p, 2, false, 0);
	cr_assert_eq(backend_pool_update(p, specs, 3), 0); /* reordered, 1 gone, 7 new */
	cr_assert_eq(backend_info(p, 2, &bi), 0);
	cr_assert_eq(ntohl(bi.addr.u.in4.sin_addr.s_addr), 0x0a000002u);
	cr_assert_eq(bi.weight, 5, "the new weight applies");
	cr_assert_eq(bi.active, 1);
	cr_assert_eq(bi.picks, 2);
	cr_assert_not(bi.up);
	cr_assert_eq(bi.fails, 3);
	cr_assert_eq(backend_info(p, 0, &bi), 0);
	cr_assert_eq(bi.picks, 2);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_eq(ntohl(bi.addr.u.in4.sin_addr.s_addr), 0x0a000007u, "freed id reused");
	cr_assert_eq(bi.picks, 0);
	backend_pool_free(p);
}

Test(backend, update_matches_ipv6_and_port)
{
	struct backend_opts o;
	struct backend_pool *p;
	struct backend_spec s[3] = {
		{ .addr = v6("2001:db8::1", 80) },
		{ .addr = v6("2001:db8::1", 81) },
		{ .addr = v4(0x7f000001, 80) },
	};
	struct backend_info bi;

	backend_opts_defaults(&o);
	cr_assert_eq(backend_pool_new(&o, &p), 0);
	cr_assert_eq(backend_pool_update(p, s, 3), 0);
	cr_assert_eq(backend_pool_update(p, s + 1, 2), 0);
	cr_assert_eq(backend_info(p, 0, &bi), -ENOENT);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_eq(ntohs(bi.addr.u.in6.sin6_port), 81);
	cr_assert_eq(bi.weight, BACKEND_WEIGHT_DEFAULT);
	backend_pool_free(p);
}

Test(backend, update_rejects_bad_specs_and_changes_nothing)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);
	struct backend_spec s[2] = { spec(5, 1), spec(6, 1) };
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	struct backend_info bi;

	s[1].weight = BACKEND_WEIGHT_MAX + 1;
	cr_assert_eq(backend_pool_update(p, s, 2), -EINVAL);
	s[1] = s[0];
	cr_assert_eq(backend_pool_update(p, s, 2), -EINVAL, "the same address twice");
	addr_from_sockaddr(&s[1].addr, (struct sockaddr *)&un, sizeof(sa_family_t));
	cr_assert_eq(backend_pool_update(p, s, 2), -EINVAL, "an unnamed unix socket");
	memset(&s[1].addr, 0, sizeof(s[1].addr));
	s[1].addr.u.sa.sa_family = AF_UNSPEC;
	s[1].addr.len = sizeof(struct sockaddr);
	cr_assert_eq(backend_pool_update(p, s, 2), -EINVAL, "not IPv4/IPv6/unix");
	cr_assert_eq(backend_pool_update(p, s, -1), -EINVAL);
	cr_assert_eq(backend_pool_update(p, NULL, 1), -EINVAL);
	cr_assert_eq(backend_count(p), 2);
	cr_assert_eq(backend_info(p, 0, &bi), 0);
	cr_assert_eq(ntohl(bi.addr.u.in4.sin_addr.s_addr), 0x0a000000u);
	s[1] = spec(6, BACKEND_WEIGHT_MAX);
	cr_assert_eq(backend_pool_update(p, s, 2), 0);
	backend_pool_free(p);
}

Test(backend, limit_counts_draining_backends)
{
	static struct backend_spec specs[BACKEND_MAX + 1];
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, BACKEND_MAX, NULL);
	struct backend_info bi;

	cr_assert_eq(backend_count(p), BACKEND_MAX);
	cr_assert_eq(backend_slots(p), BACKEND_MAX);
	for (uint32_t i = 0; i <= BACKEND_MAX; i++)
		specs[i] = spec(i + 5000, 1);
	cr_assert_eq(backend_pool_update(p, specs, BACKEND_MAX + 1), -ENOSPC);
	/* One old backend still has a session: 1024 new ones do not fit beside it. */
	backend_acquire(p, 700);
	cr_assert_eq(backend_pool_update(p, specs, BACKEND_MAX), -ENOSPC);
	cr_assert_eq(backend_pool_update(p, specs, BACKEND_MAX - 1), 0);
	cr_assert_eq(backend_info(p, 700, &bi), 0);
	cr_assert(bi.removed);
	cr_assert_eq(backend_info(p, 1023, &bi), 0);
	cr_assert_eq(ntohl(bi.addr.u.in4.sin_addr.s_addr), 0x0a000000u + 5000 + 1022);
	backend_release(p, 700);
	cr_assert_eq(backend_pool_update(p, specs, BACKEND_MAX), 0);
	cr_assert_eq(backend_count(p), BACKEND_MAX);
	backend_pool_free(p);
}

Test(backend, info_iterates_for_metrics)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 5, NULL);
	uint64_t picks = 0;
	uint32_t seen = 0;

	for (int i = 0; i < 23; i++)
		pick(p, NULL);
	for (uint32_t id = 0; id < backend_slots(p); id++) {
		struct backend_info bi;

		if (backend_info(p, id, &bi) < 0)
			continue;
		seen++;
		picks += bi.picks;
		cr_assert(bi.up);
		cr_assert_not(bi.removed);
		cr_assert_eq(bi.weight, 1);
	}
	cr_assert_eq(seen, backend_count(p));
	cr_assert_eq(picks, 23);
	cr_assert_eq(backend_pool_balance(p), BALANCE_ROUNDROBIN);
	backend_pool_free(p);
}

/* ---- backups ---- */

/* np primaries (backends 0..np-1, ids 0..np-1) then nb backups (backends np.., ids np..), with
 * weights[i] for member i when weights is given. */
static struct backend_pool *mkpool_b(enum backend_balance bal, uint32_t np, uint32_t nb,
				     const uint32_t *weights)
{
	struct backend_spec specs[64];
	struct backend_opts o;
	struct backend_pool *p;

	cr_assert_leq(np + nb, 64);
	backend_opts_defaults(&o);
	o.balance = bal;
	o.seed = 42;
	cr_assert_eq(backend_pool_new(&o, &p), 0);
	for (uint32_t i = 0; i < np + nb; i++) {
		specs[i] = spec(i, weights ? weights[i] : 0);
		specs[i].backup = i >= np;
	}
	cr_assert_eq(backend_pool_update(p, specs, (int)(np + nb)), 0);
	return p;
}

/* fail_threshold (3) failures at now: marks a member down until now + 10 s. */
static void mark_down(struct backend_pool *p, uint32_t id, uint64_t now)
{
	for (int i = 0; i < 3; i++)
		backend_report(p, id, false, now);
}

/* n picks at now, one client each (a new random one for hash), every session acquired so
 * leastconn and random2 spread; counts per id in got[]. */
static void pick_many(struct backend_pool *p, int n, uint64_t now, uint32_t *got, uint32_t slots)
{
	for (int i = 0; i < n; i++) {
		struct addr c = v4((uint32_t)rnd(), 1);
		int id = backend_pick(p, &c.u.sa, now, NULL, 0);

		cr_assert_geq(id, 0, "%s: pick %d found nothing",
			      backend_balance_name(backend_pool_balance(p)), i);
		cr_assert_lt((uint32_t)id, slots);
		got[id]++;
		backend_acquire(p, (uint32_t)id);
	}
}

Test(backend, backups_idle_while_a_primary_is_up)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 2, 2, NULL);
		uint32_t got[4] = { 0 };
		struct backend_info bi;

		cr_assert_not(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), 0);
		pick_many(p, 400, 0, got, 4);
		cr_assert_eq(got[2] + got[3], 0,
			     "%s: the backups got %u and %u of 400 picks with "
			     "both primaries up",
			     backend_balance_name(bal), got[2], got[3]);
		cr_assert(got[0] > 100 && got[1] > 100, "%s: primaries got %u and %u",
			  backend_balance_name(bal), got[0], got[1]);
		/* One primary down: the other carries everything, the backups stay idle. */
		mark_down(p, 0, 0);
		memset(got, 0, sizeof(got));
		pick_many(p, 100, 1000, got, 4);
		cr_assert_eq(got[1], 100, "%s: the last primary up got %u of 100",
			     backend_balance_name(bal), got[1]);
		cr_assert_not(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), 0);
		cr_assert_eq(backend_info(p, 2, &bi), 0);
		cr_assert(bi.backup);
		cr_assert_eq(bi.picks, 0);
		cr_assert_eq(backend_info(p, 1, &bi), 0);
		cr_assert_not(bi.backup);
		backend_pool_free(p);
	}
}

Test(backend, backups_take_over_when_every_primary_is_down_by_failures)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 2, 2, NULL);
		uint32_t got[4] = { 0 };
		const char *name = backend_balance_name(bal);

		mark_down(p, 0, 100);
		cr_assert_not(backend_pool_using_backup(p), "%s: one primary is still up", name);
		cr_assert(backend_report(p, 1, false, 100) == false);
		cr_assert(backend_report(p, 1, false, 100) == false);
		cr_assert(backend_report(p, 1, false, 100), "%s: third failure marks it down",
			  name);
		cr_assert(backend_pool_using_backup(p), "%s: every primary is down", name);
		cr_assert_eq(backend_pool_backup_changed(p), 1);
		cr_assert_eq(backend_pool_backup_changed(p), 0, "%s: told once", name);
		/* Down until 10100: every pick before that is a backup, spread over both. */
		pick_many(p, 400, 5000, got, 4);
		cr_assert_eq(got[0] + got[1], 0, "%s: a down primary got %u picks", name,
			     got[0] + got[1]);
		cr_assert(got[2] > 100 && got[3] > 100, "%s: backups got %u and %u of 400", name,
			  got[2], got[3]);
		/* Primary 1 answers (a half-open probe, or a connect begun before): back. */
		cr_assert(backend_report(p, 1, true, 6000));
		cr_assert_not(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), -1, "%s", name);
		cr_assert_eq(backend_pool_backup_changed(p), 0);
		memset(got, 0, sizeof(got));
		pick_many(p, 100, 6000, got, 4);
		cr_assert_eq(got[1], 100, "%s: the primary back up got %u of 100", name, got[1]);
		backend_pool_free(p);
	}
}

Test(backend, backups_take_over_when_every_primary_is_down_by_checks)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 2, 1, NULL);
		uint32_t got[3] = { 0 };
		const char *name = backend_balance_name(bal);

		cr_assert(backend_set_up(p, 0, false));
		cr_assert_not(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), 0);
		cr_assert(backend_set_up(p, 1, false));
		cr_assert(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), 1);
		/* Down by a check is never half-open: the backup keeps the traffic. */
		pick_many(p, 50, 1000000000ull, got, 3);
		cr_assert_eq(got[2], 50, "%s: the backup got %u of 50", name, got[2]);
		cr_assert_not(backend_set_up(p, 1, false), "no change, no refresh");
		cr_assert(backend_set_up(p, 0, true));
		cr_assert_not(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), -1);
		memset(got, 0, sizeof(got));
		pick_many(p, 50, 1000000000ull, got, 3);
		cr_assert_eq(got[0], 50, "%s: the primary checked up got %u of 50", name, got[0]);
		backend_pool_free(p);
	}
}

Test(backend, half_open_primary_gets_the_probe_and_the_state_holds)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 1, 1, NULL);
		struct addr c = v4(0x01020304, 1);
		const char *name = backend_balance_name(bal);
		uint32_t tried = 0;

		mark_down(p, 0, 0); /* down until 10000 */
		cr_assert_eq(backend_pool_backup_changed(p), 1);
		cr_assert_eq(backend_pick(p, &c.u.sa, 9999, NULL, 0), 1, "%s", name);
		/* Half-open: the primary gets the probe; still "on the backups" until it answers.
		 */
		cr_assert_eq(backend_pick(p, &c.u.sa, 10000, NULL, 0), 0, "%s", name);
		cr_assert(backend_pool_using_backup(p));
		/* The probe's session retries on the backup. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 10000, &tried, 1), 1, "%s", name);
		/* The probe fails: down again at once, no state change to log. */
		cr_assert_not(backend_report(p, 0, false, 10001));
		cr_assert(backend_pool_using_backup(p));
		cr_assert_eq(backend_pool_backup_changed(p), 0, "%s: a failed probe is no news",
			     name);
		cr_assert_eq(backend_pick(p, &c.u.sa, 15000, NULL, 0), 1, "%s", name);
		/* Next period over; this probe succeeds. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 20001, NULL, 0), 0, "%s", name);
		cr_assert(backend_report(p, 0, true, 20002));
		cr_assert_eq(backend_pool_backup_changed(p), -1, "%s", name);
		cr_assert_eq(backend_pick(p, &c.u.sa, 20003, NULL, 0), 0, "%s", name);
		backend_pool_free(p);
	}
}

Test(backend, retry_past_every_primary_goes_to_a_backup)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 2, 1, NULL);
		struct addr c = v4(0x05060708, 1);
		uint32_t tried[2] = { 0, 1 };
		int id;

		/* Both primaries up (not yet marked down) but both failed for this session. */
		id = backend_pick(p, &c.u.sa, 0, tried, 2);
		cr_assert_eq(id, 2, "%s: retry went to %d", backend_balance_name(bal), id);
		cr_assert_not(backend_pool_using_backup(p), "one session's retry is not a move");
		cr_assert_eq(backend_pool_backup_changed(p), 0);
		/* With only one of them tried, the other primary. */
		id = backend_pick(p, &c.u.sa, 0, tried, 1);
		cr_assert_eq(id, 1, "%s", backend_balance_name(bal));
		/* Everything tried: nothing left. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 0, (const uint32_t[]){ 0, 1, 2 }, 3), -1);
		backend_pool_free(p);
	}
}

Test(backend, backups_down_too_falls_back_to_a_primary_first)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 2, 2, NULL);
		struct addr c = v4(0x01010101, 1);
		const char *name = backend_balance_name(bal);
		uint32_t tried[2] = { 0, 1 };

		mark_down(p, 2, 100); /* backup, back at 10100: the soonest of all */
		mark_down(p, 0, 400); /* primary, back at 10400 */
		mark_down(p, 1, 300); /* primary, back at 10300 */
		cr_assert(backend_pool_using_backup(p));
		/* Backup 3 is up: it carries everything. */
		for (int i = 0; i < 5; i++)
			cr_assert_eq(backend_pick(p, &c.u.sa, 500, NULL, 0), 3, "%s", name);
		mark_down(p, 3, 200); /* back at 10200 */
		/* All down: the primary back soonest, though backups are back sooner. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 500, NULL, 0), 1, "%s", name);
		cr_assert_eq(backend_pick(p, &c.u.sa, 500, tried + 1, 1), 0, "%s", name);
		/* Every primary tried: the backup back soonest. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 500, tried, 2), 2, "%s", name);
		/* Backup 2 half-open at 10100: an ordinary pick among the backups. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 10150, NULL, 0), 2, "%s", name);
		/* Primary 1 half-open at 10300: primaries first again. */
		cr_assert_eq(backend_pick(p, &c.u.sa, 10350, NULL, 0), 1, "%s", name);
		cr_assert(backend_pool_using_backup(p), "half-open is not up");
		backend_pool_free(p);
	}
}

Test(backend, backups_down_while_on_backup_fail_over_among_themselves)
{
	struct backend_pool *p = mkpool_b(BALANCE_ROUNDROBIN, 1, 3, NULL);
	uint32_t got[4] = { 0 };

	backend_set_up(p, 0, false);
	cr_assert_eq(backend_pool_backup_changed(p), 1);
	backend_set_up(p, 2, false);
	cr_assert_eq(backend_pool_backup_changed(p), 0, "a backup going down is not a move");
	pick_many(p, 100, 0, got, 4);
	cr_assert_eq(got[1], 50);
	cr_assert_eq(got[3], 50);
	cr_assert_eq(got[0] + got[2], 0);
	backend_pool_free(p);
}

Test(backend, roundrobin_weights_among_backups)
{
	const uint32_t w[] = { 1, 3, 1 };
	struct backend_pool *p = mkpool_b(BALANCE_ROUNDROBIN, 1, 2, w);
	const char *seq = "aaba"; /* nginx's smooth sequence for weights 3, 1 */

	backend_set_up(p, 0, false);
	for (int cycle = 0; cycle < 5; cycle++) {
		for (size_t i = 0; i < strlen(seq); i++) {
			int id = pick(p, NULL);

			cr_assert_eq(id, 1 + seq[i] - 'a', "cycle %d step %zu: got id %d", cycle, i,
				     id);
		}
	}
	backend_pool_free(p);
}

Test(backend, leastconn_and_random2_among_backups_follow_their_load)
{
	static const enum backend_balance bals[] = { BALANCE_LEASTCONN, BALANCE_RANDOM2 };

	for (size_t k = 0; k < 2; k++) {
		struct backend_pool *p = mkpool_b(bals[k], 2, 2, NULL);

		/* The primaries carry nothing, backup 2 carries 5: the idle backup 3 wins every
		 * time (random2: with two backups both are always the two choices). */
		for (int i = 0; i < 5; i++)
			backend_acquire(p, 2);
		backend_set_up(p, 0, false);
		backend_set_up(p, 1, false);
		for (int i = 0; i < 5; i++) {
			int id = pick(p, NULL);

			cr_assert_eq(id, 3, "%s pick %d: %d", backend_balance_name(bals[k]), i, id);
			backend_acquire(p, 3);
		}
		/* Now even: they share. */
		uint32_t got[4] = { 0 };

		pick_many(p, 100, 0, got, 4);
		cr_assert_eq(got[0] + got[1], 0);
		cr_assert(got[2] >= 45 && got[3] >= 45, "%s: %u and %u",
			  backend_balance_name(bals[k]), got[2], got[3]);
		backend_pool_free(p);
	}
}

/* Picks for every client, as backend numbers, through a pool; asserts each is in [lo, hi). */
static void map_clients_in(struct backend_pool *p, int *out, int lo, int hi)
{
	map_clients(p, out);
	for (int i = 0; i < NCLIENTS; i++)
		cr_assert(out[i] >= lo && out[i] < hi, "client %d went to backend %d, want %d..%d",
			  i, out[i], lo, hi - 1);
}

Test(backend, hash_is_consistent_within_the_active_set)
{
	struct backend_pool *p = mkpool_b(BALANCE_HASH, 3, 4, NULL);
	struct backend_spec only_backups[4], only_primaries[3], specs[7];
	struct backend_pool *ref_b, *ref_p;
	struct backend_opts o;
	uint32_t moved = 0;

	backend_opts_defaults(&o);
	o.balance = BALANCE_HASH;
	cr_assert_eq(backend_pool_new(&o, &ref_b), 0);
	cr_assert_eq(backend_pool_new(&o, &ref_p), 0);
	for (uint32_t i = 0; i < 7; i++) {
		specs[i] = spec(i, 1);
		specs[i].backup = i >= 3;
		if (i < 3)
			only_primaries[i] = spec(i, 1);
		else
			only_backups[i - 3] = spec(i, 1);
	}
	cr_assert_eq(backend_pool_update(ref_b, only_backups, 4), 0);
	cr_assert_eq(backend_pool_update(ref_p, only_primaries, 3), 0);
	random_clients(clients, NCLIENTS);

	/* Primaries up: every client goes where a pool of only the primaries sends it. */
	map_clients_in(p, before, 0, 3);
	map_clients(ref_p, after);
	cr_assert_arr_eq(before, after, sizeof(int) * NCLIENTS);
	/* Every primary down: where a pool of only the backups sends it. */
	for (uint32_t i = 0; i < 3; i++)
		backend_set_up(p, i, false);
	map_clients_in(p, before, 3, 7);
	map_clients(ref_b, after);
	cr_assert_arr_eq(before, after, sizeof(int) * NCLIENTS);
	/* A backup (the last one, 6) goes away: only its clients move. */
	cr_assert_eq(backend_pool_update(p, specs, 6), 0);
	map_clients_in(p, after, 3, 7);
	for (int i = 0; i < NCLIENTS; i++) {
		cr_assert_neq(after[i], 6);
		if (before[i] != 6)
			cr_assert_eq(after[i], before[i], "client %d of a remaining backup moved",
				     i);
		moved += after[i] != before[i];
	}
	cr_assert(moved > 0.7 * NCLIENTS / 4 && moved < 1.3 * NCLIENTS / 4, "%u moved", moved);
	/* A primary comes back: every client returns to its primary-pool choice. */
	cr_assert(backend_set_up(p, 1, true));
	backend_set_up(p, 0, true);
	backend_set_up(p, 2, true);
	map_clients_in(p, before, 0, 3);
	map_clients(ref_p, after);
	cr_assert_arr_eq(before, after, sizeof(int) * NCLIENTS);
	backend_pool_free(p);
	backend_pool_free(ref_b);
	backend_pool_free(ref_p);
}

Test(backend, pool_of_only_backups_is_served_by_them)
{
	for (int bal = 0; bal < BALANCE__COUNT; bal++) {
		struct backend_pool *p = mkpool_b(bal, 0, 3, NULL);
		uint32_t got[3] = { 0 };

		cr_assert(backend_pool_using_backup(p), "no primary is up: on the backups");
		cr_assert_eq(backend_pool_backup_changed(p), 1);
		pick_many(p, 300, 0, got, 3);
		cr_assert(got[0] > 50 && got[1] > 50 && got[2] > 50, "%s: %u %u %u",
			  backend_balance_name(bal), got[0], got[1], got[2]);
		backend_pool_free(p);
	}
}

Test(backend, update_flips_backup_flags_keeping_ids_and_counters)
{
	struct backend_pool *p = mkpool_b(BALANCE_ROUNDROBIN, 1, 1, NULL);
	struct backend_spec specs[2] = { spec(0, 1), spec(1, 2) };
	struct backend_info bi;

	for (int i = 0; i < 4; i++)
		cr_assert_eq(pick(p, NULL), 0);
	backend_acquire(p, 0);
	mark_down(p, 0, 0);
	cr_assert_eq(backend_pool_backup_changed(p), 1);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pick(p, NULL), 1);
	/* 0 (down) becomes the backup, 1 (up) the primary: no longer on the backups. */
	specs[0].backup = true;
	cr_assert_eq(backend_pool_update(p, specs, 2), 0);
	cr_assert_not(backend_pool_using_backup(p));
	cr_assert_eq(backend_pool_backup_changed(p), -1);
	cr_assert_eq(backend_info(p, 0, &bi), 0);
	cr_assert(bi.backup);
	cr_assert_eq(bi.picks, 4, "counters kept");
	cr_assert_eq(bi.active, 1);
	cr_assert_not(bi.up, "health kept");
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_not(bi.backup);
	cr_assert_eq(bi.picks, 3);
	cr_assert_eq(bi.weight, 2, "the new weight applies too");
	cr_assert_eq(backend_count(p), 2);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pick(p, NULL), 1);
	/* 0 recovers: still only a backup, so the traffic stays on 1. */
	backend_report(p, 0, true, 0);
	cr_assert_eq(backend_pool_backup_changed(p), 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pick(p, NULL), 1);
	/* Flipped back: both primaries now, no backup at all. */
	specs[0].backup = false;
	cr_assert_eq(backend_pool_update(p, specs, 2), 0);
	cr_assert_eq(backend_info(p, 0, &bi), 0);
	cr_assert_not(bi.backup);
	cr_assert_eq(bi.picks, 4);
	cr_assert_not(backend_pool_using_backup(p));
	backend_pool_free(p);
}

Test(backend, update_dropping_the_primaries_moves_to_the_backups)
{
	struct backend_pool *p = mkpool_b(BALANCE_LEASTCONN, 2, 1, NULL);
	struct backend_spec specs[3] = { spec(0, 1), spec(1, 1), spec(2, 1) };
	struct backend_info bi;

	specs[2].backup = true;
	backend_acquire(p, 0); /* 0 drains after its removal: up, but no longer a member */
	cr_assert_eq(backend_pool_update(p, specs + 2, 1), 0);
	cr_assert(backend_pool_using_backup(p), "the draining primary does not count");
	cr_assert_eq(backend_pool_backup_changed(p), 1);
	cr_assert_eq(backend_info(p, 0, &bi), 0);
	cr_assert(bi.removed);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pick(p, NULL), 2);
	/* A new primary arrives: back to it. */
	cr_assert_eq(backend_pool_update(p, specs + 1, 2), 0);
	cr_assert_not(backend_pool_using_backup(p));
	cr_assert_eq(backend_pool_backup_changed(p), -1);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(pick(p, NULL), 1);
	backend_release(p, 0);
	cr_assert_eq(backend_info(p, 0, &bi), -ENOENT);
	backend_pool_free(p);
}

Test(backend, backup_changed_reports_the_net_change)
{
	struct backend_pool *p = mkpool_b(BALANCE_ROUNDROBIN, 1, 1, NULL);

	backend_set_up(p, 0, false);
	backend_set_up(p, 0, true);
	cr_assert_eq(backend_pool_backup_changed(p), 0, "down and up again between two calls");
	backend_set_up(p, 0, false);
	cr_assert_eq(backend_pool_backup_changed(p), 1);
	backend_set_up(p, 0, true);
	backend_set_up(p, 0, false);
	cr_assert_eq(backend_pool_backup_changed(p), 0);
	cr_assert(backend_pool_using_backup(p));
	/* Reports for unknown ids change nothing. */
	cr_assert_not(backend_report(p, 9, true, 0));
	cr_assert(backend_pool_using_backup(p));
	backend_pool_free(p);
}

Test(backend, no_backups_no_backup_state)
{
	struct backend_pool *p = mkpool(BALANCE_ROUNDROBIN, 2, NULL);

	backend_set_up(p, 0, false);
	backend_set_up(p, 1, false);
	cr_assert_not(backend_pool_using_backup(p), "nothing to move to");
	cr_assert_eq(backend_pool_backup_changed(p), 0);
	backend_pool_free(p);
}

/* A unix socket address: a path, or an abstract name when name starts with '@'. */
static struct addr unix_addr(const char *name)
{
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	size_t n = strlen(name);
	struct addr a;

	memcpy(un.sun_path, name, n);
	if (name[0] == '@')
		un.sun_path[0] = '\0';
	addr_from_sockaddr(
		&a, (struct sockaddr *)&un,
		(socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '@' ? 0 : 1)));
	return a;
}

Test(backend, unix_upstreams_are_members)
{
	struct backend_pool *p = mkpool(BALANCE_HASH, 0, NULL);
	struct backend_spec s[3] = { { .addr = unix_addr("/run/a.sock") },
				     { .addr = unix_addr("@b") },
				     { .addr = v4(0x7f000001, 80), .backup = true } };
	struct backend_info bi;
	bool seen[2] = { false };
	uint64_t picks;

	cr_assert_eq(backend_pool_update(p, s, 3), 0);
	cr_assert_eq(backend_count(p), 3);
	/* Hash by a client IP spreads over both unix upstreams; a unix client (no IP) rotates. */
	for (uint32_t i = 0; i < 200; i++) {
		struct addr c = v4(0x0c000000u + i * 7919, 1);
		int id = pick(p, &c);

		cr_assert(id == 0 || id == 1, "client %u went to %d", i, id);
		seen[id] = true;
		cr_assert_eq(pick(p, &c), id, "the same client, the same unix upstream");
	}
	cr_assert(seen[0] && seen[1]);
	cr_assert_neq(pick(p, &s[0].addr), pick(p, &s[0].addr), "no IP to hash: round robin");
	/* Same names again: same ids, counters kept. */
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	picks = bi.picks;
	cr_assert_gt(picks, 0);
	cr_assert_eq(backend_pool_update(p, s, 3), 0);
	cr_assert_eq(backend_info(p, 1, &bi), 0);
	cr_assert_eq(bi.addr.u.sa.sa_family, AF_UNIX);
	cr_assert_eq(bi.picks, picks);
	s[1] = s[0];
	cr_assert_eq(backend_pool_update(p, s, 2), -EINVAL, "the same path twice");
	backend_pool_free(p);
}
