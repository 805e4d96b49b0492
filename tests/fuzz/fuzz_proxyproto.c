/* libFuzzer target for proxyproto: arbitrary bytes through proxyproto_parse, whole, as growing
 * prefixes and in random read-sized pieces (all must agree), and builder output parsed back.
 * Checks with abort() so that a violated property is a crash the fuzzer keeps. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uproxy/proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* Prefixes longer than this decide nothing new: the parser never needs more. */
#define FUZZ_PREFIX_MAX (PROXYPROTO_MAX_LEN + 1)
/* Every prefix up to this length is parsed (all of v1, v2 up to an AF_UNIX block); past it,
 * strides of 1-16 bytes chosen by the input, which keeps a 1 KiB header from costing 1000
 * parses per run. */
#define FUZZ_PREFIX_DENSE 256
/* Prefixes parsed past the first one that decides, before jumping to the longest. */
#define FUZZ_PREFIX_AFTER 8

static bool same_result(const struct proxyproto_result *a, const struct proxyproto_result *b)
{
	return a->len == b->len && a->version == b->version && a->command == b->command &&
	       a->family == b->family && a->tlv_off == b->tlv_off && a->tlv_len == b->tlv_len &&
	       a->src.len == b->src.len && a->dst.len == b->dst.len &&
	       memcmp(&a->src.u, &b->src.u, a->src.len) == 0 &&
	       memcmp(&a->dst.u, &b->dst.u, a->dst.len) == 0;
}

/* The one property of every return value, whatever the input. */
static void check_shape(int rc, size_t len, const struct proxyproto_result *r)
{
	CHECK(rc == 0 || rc == -EINVAL || rc == -E2BIG || rc == -EPROTONOSUPPORT || rc > 0);
	if (rc < 0)
		CHECK(r->why != NULL && r->why[0] != '\0');
	if (rc == 0)
		CHECK(len < PROXYPROTO_MAX_LEN);
	if (rc <= 0)
		return;
	CHECK((size_t)rc <= len && (size_t)rc <= PROXYPROTO_MAX_LEN && r->len == (uint32_t)rc);
	CHECK(r->version == 1 || r->version == 2);
	if (r->version == 1)
		CHECK(rc <= PROXYPROTO_V1_MAX_LEN);
	if (r->command == PROXYPROTO_CMD_PROXY) {
		CHECK(r->family == AF_INET || r->family == AF_INET6);
		CHECK(r->src.u.sa.sa_family == r->family && r->dst.u.sa.sa_family == r->family);
	} else {
		CHECK(r->command == PROXYPROTO_CMD_LOCAL || r->command == PROXYPROTO_CMD_UNKNOWN);
		CHECK(r->family == AF_UNSPEC && r->src.len == 0 && r->dst.len == 0);
	}
	CHECK((size_t)r->tlv_off + r->tlv_len <= (size_t)rc);
	if (r->tlv_len > 0)
		CHECK(r->version == 2 && r->tlv_off >= PROXYPROTO_V2_HDR_LEN);
}

/*
 * What a prefix of length k must give, knowing the whole buffer gave rc: a complete header is
 * seen exactly when all of it is in; an error, once seen, stays the same error.
 */
static int check_prefix(const uint8_t *data, size_t k, int rc, int *seen_err)
{
	struct proxyproto_result r;
	int p = proxyproto_parse(data, k, &r);

	check_shape(p, k, &r);
	if (rc > 0) {
		CHECK(p == ((size_t)rc <= k ? rc : 0));
	} else if (rc == 0) {
		CHECK(p == 0);
	} else {
		CHECK(p == 0 || p == rc);
		CHECK(*seen_err == 0 || p == *seen_err);
		if (p < 0)
			*seen_err = p;
	}
	return p;
}

/* Parses growing prefixes of data (see FUZZ_PREFIX_DENSE) and checks each against rc. */
static void check_prefixes(const uint8_t *data, size_t size, int rc)
{
	size_t limit = size < FUZZ_PREFIX_MAX ? size : FUZZ_PREFIX_MAX, decided = 0;
	int seen_err = 0;

	for (size_t k = 0; k <= limit;) {
		if (check_prefix(data, k, rc, &seen_err) != 0 && decided == 0)
			decided = k;
		if (decided != 0 && k >= decided + FUZZ_PREFIX_AFTER)
			break;
		k += k < FUZZ_PREFIX_DENSE ? 1 : 1 + data[k % size] % 16;
	}
	if (rc > 0) { /* the exact edge, whatever the strides skipped */
		check_prefix(data, (size_t)rc - 1, rc, &seen_err);
		check_prefix(data, (size_t)rc, rc, &seen_err);
	}
	check_prefix(data, limit, rc, &seen_err);
	if (rc < 0)
		CHECK(seen_err == rc);
}

/* A tiny deterministic generator seeded from the input, for read sizes. */
static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* Feeds data as a socket would: reads of 1..64 bytes appended to a staging buffer, parsing
 * after each; the first non-zero answer must be the whole buffer's. */
static void check_reads(const uint8_t *data, size_t size, int rc)
{
	uint32_t seed = 2166136261u;
	struct proxyproto_result r;
	uint8_t *stage = malloc(size ? size : 1);
	size_t have = 0;
	int p = 0;

	CHECK(stage != NULL);
	for (size_t i = 0; i < size && i < 64; i++)
		seed = (seed ^ data[i]) * 16777619u;
	seed |= 1;
	while (have < size && p == 0) {
		size_t n = 1 + next_rand(&seed) % 64;

		if (n > size - have)
			n = size - have;
		memcpy(stage + have, data + have, n);
		have += n;
		p = proxyproto_parse(stage, have, &r);
	}
	CHECK(p == rc);
	free(stage);
}

/* Re-encodes a parsed PROXY header: it must parse back to the same addresses; a canonical v1
 * TCP4 line and a v2 header without TLVs come back byte for byte. */
static void check_rebuild(const uint8_t *data, int rc, const struct proxyproto_result *r)
{
	struct proxyproto_result back;
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX];
	int n;

	if (rc <= 0 || r->command != PROXYPROTO_CMD_PROXY)
		return;
	if (r->version == 1) {
		n = proxyproto_build_v1(&r->src, &r->dst, text, sizeof(text));
		CHECK(n > 0);
		CHECK(proxyproto_parse((const uint8_t *)text, (size_t)n, &back) == n);
		if (r->family == AF_INET)
			CHECK(n == rc && memcmp(text, data, (size_t)n) == 0);
	} else {
		n = proxyproto_build_v2(&r->src, &r->dst, bin, sizeof(bin));
		CHECK(n > 0);
		CHECK(proxyproto_parse(bin, (size_t)n, &back) == n);
		if (r->tlv_len == 0)
			CHECK(n == rc && memcmp(bin, data, (size_t)n) == 0);
	}
	CHECK(back.command == PROXYPROTO_CMD_PROXY && back.family == r->family);
	CHECK(addr_equal(&back.src, &r->src) && addr_equal(&back.dst, &r->dst));
}

/* Takes an address of either family from the input. */
static void take_addr(const uint8_t *p, struct addr *a)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };

	if (p[0] & 1) {
		memcpy(&sin6.sin6_addr, p + 1, 16);
		memcpy(&sin6.sin6_port, p + 17, 2);
		addr_from_sockaddr(a, (struct sockaddr *)&sin6, sizeof(sin6));
	} else {
		memcpy(&sin.sin_addr, p + 1, 4);
		memcpy(&sin.sin_port, p + 17, 2);
		addr_from_sockaddr(a, (struct sockaddr *)&sin, sizeof(sin));
	}
}

/* The IPv6 form the builders send an address as, when the header is TCP6. */
static struct addr as_v6(const struct addr *a)
{
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
	struct addr r;

	if (a->u.sa.sa_family == AF_INET6)
		return *a;
	sin6.sin6_port = a->u.in4.sin_port;
	sin6.sin6_addr.s6_addr[10] = 0xff;
	sin6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&sin6.sin6_addr.s6_addr[12], &a->u.in4.sin_addr, 4);
	addr_from_sockaddr(&r, (struct sockaddr *)&sin6, sizeof(sin6));
	return r;
}

/* Builds both versions from addresses taken from the input; both must parse back exactly,
 * and a too-small output buffer must be refused without a byte written past it. */
static void check_build(const uint8_t *data, size_t size)
{
	struct addr s, d, ws, wd;
	struct proxyproto_result r;
	char text[PROXYPROTO_V1_BUILD_MAX];
	uint8_t bin[PROXYPROTO_V2_BUILD_MAX], *o2;
	char *o1;
	size_t cap;
	int n1, n2;

	if (size < 38)
		return;
	take_addr(data, &s);
	take_addr(data + 19, &d);
	ws = s;
	wd = d;
	if (s.u.sa.sa_family != d.u.sa.sa_family) {
		ws = as_v6(&s);
		wd = as_v6(&d);
	}
	n1 = proxyproto_build_v1(&s, &d, text, sizeof(text));
	CHECK(n1 > 0 && n1 <= PROXYPROTO_V1_MAX_LEN && (size_t)n1 == strlen(text));
	CHECK(proxyproto_parse((const uint8_t *)text, (size_t)n1, &r) == n1);
	CHECK(r.command == PROXYPROTO_CMD_PROXY);
	CHECK(addr_equal(&r.src, &ws) && addr_equal(&r.dst, &wd));
	n2 = proxyproto_build_v2(&s, &d, bin, sizeof(bin));
	CHECK(n2 > 0 && n2 <= PROXYPROTO_V2_BUILD_MAX);
	CHECK(proxyproto_parse(bin, (size_t)n2, &r) == n2);
	CHECK(r.command == PROXYPROTO_CMD_PROXY);
	CHECK(addr_equal(&r.src, &ws) && addr_equal(&r.dst, &wd));

	/* one too-small output buffer, chosen by the input, of exact size so that ASan sees any
	 * write past its end */
	cap = data[38 % size] % ((size_t)n1 + 1); /* n1 + 1 would fit the NUL */
	o1 = malloc(cap ? cap : 1);
	CHECK(o1 != NULL);
	CHECK(proxyproto_build_v1(&s, &d, cap ? o1 : NULL, cap) == -ENOSPC);
	free(o1);
	cap = data[39 % size] % (size_t)n2;
	o2 = malloc(cap ? cap : 1);
	CHECK(o2 != NULL);
	CHECK(proxyproto_build_v2(&s, &d, o2, cap) == -ENOSPC);
	free(o2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxyproto_result whole, again;
	uint8_t *copy;
	int rc;

	/* an exact-size copy: ASan catches any read past len */
	copy = malloc(size ? size : 1);
	CHECK(copy != NULL);
	memcpy(copy, data, size);
	rc = proxyproto_parse(copy, size, &whole);
	check_shape(rc, size, &whole);
	CHECK(proxyproto_parse(copy, size, &again) == rc); /* no hidden state */
	if (rc > 0)
		CHECK(same_result(&whole, &again));

	check_prefixes(copy, size, rc);
	check_reads(copy, size, rc);
	check_rebuild(copy, rc, &whole);
	check_build(copy, size);
	free(copy);
	return 0;
}
