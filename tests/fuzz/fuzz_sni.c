/* libFuzzer target for sni_parse and sni_route_match: whatever the bytes, a parse stays in
 * bounds (ASan), a verdict is final (every longer prefix gives it again, a shorter one gives it
 * or need-more), reads of any size reach the same verdict, a found name is a valid lower-case
 * host name under 256 bytes that routes to itself, and a complete ClientHello cut into other
 * records at input-chosen points gives the same verdict and name.
 * Checks with abort() so that a violated property is a crash the fuzzer keeps. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uproxy/sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                             \
		}                                                                            \
	} while (0)

/* Every prefix up to this length is parsed; past it, strides of 1-64 bytes chosen by the input
 * (a 16 KiB input would otherwise cost 16,000 parses a run). */
#define FUZZ_PREFIX_DENSE 512
/* Inputs up to this long are also fed one byte per read. */
#define FUZZ_BYTEWISE_MAX 2048
/* Prefixes parsed past the first one that decides, before jumping to the longest. */
#define FUZZ_PREFIX_AFTER 16

/* One parse into a fresh name buffer, with the properties of every answer. */
static enum sni_result parse(const uint8_t *buf, size_t len, char *name)
{
	enum sni_result r;
	size_t n;

	memset(name, 0x7f, SNI_NAME_MAX);
	r = sni_parse(buf, len, name, SNI_NAME_MAX);
	CHECK(r >= SNI_NEED_MORE && r <= SNI_MALFORMED);
	CHECK(strcmp(sni_result_name(r), "unknown") != 0);
	if (r == SNI_NEED_MORE)
		CHECK(len < SNI_MAX_INPUT);
	if (r != SNI_FOUND) {
		CHECK(name[0] == '\0');
		return r;
	}
	n = strnlen(name, SNI_NAME_MAX);
	CHECK(n > 0 && n < SNI_NAME_MAX);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
		      c == '.');
	}
	return r;
}

/* A found name is a valid exact pattern and routes to itself; "*." before it (when that fits
 * a pattern) matches not the name but the name one label longer, and loses to the exact one. */
static void check_routes(const char *name)
{
	static struct config_sni_route routes[2];
	size_t n = strlen(name);
	const char *why = NULL;
	char longer[SNI_NAME_MAX + 2];

	CHECK(sni_pattern_check(name, &why) == 0);
	memcpy(routes[0].pattern, name, n + 1);
	CHECK(sni_route_match(routes, 1, name) == 0);
	if (n + 2 >= CONFIG_SNI_PATTERN_MAX)
		return;
	memcpy(routes[1].pattern, "*.", 2);
	memcpy(routes[1].pattern + 2, name, n + 1);
	CHECK(sni_pattern_check(routes[1].pattern, &why) == 0);
	CHECK(sni_route_match(routes + 1, 1, name) == -1);
	CHECK(sni_route_match(routes, 2, name) == 0);
	memcpy(longer, "x.", 2);
	memcpy(longer + 2, name, n + 1);
	CHECK(sni_route_match(routes + 1, 1, longer) == 0);
	CHECK(sni_route_match(routes, 2, longer) == 1);
}

/* What a prefix of length k must give, knowing the whole input gave r (name): need-more until
 * the first verdict, then that verdict (and name) at every longer prefix. */
static enum sni_result check_prefix(const uint8_t *data, size_t k, enum sni_result r,
				    const char *name, enum sni_result *seen)
{
	char got[SNI_NAME_MAX];
	enum sni_result p = parse(data, k, got);

	CHECK(p == SNI_NEED_MORE || p == r);
	if (*seen != SNI_NEED_MORE)
		CHECK(p == *seen);
	if (p == SNI_FOUND)
		CHECK(strcmp(got, name) == 0);
	if (p != SNI_NEED_MORE)
		*seen = p;
	return p;
}

/* Parses growing prefixes of data (see FUZZ_PREFIX_DENSE) and checks each against r. */
static void check_prefixes(const uint8_t *data, size_t size, enum sni_result r, const char *name)
{
	enum sni_result seen = SNI_NEED_MORE;
	size_t decided = 0;

	for (size_t k = 0; k < size;) {
		if (check_prefix(data, k, r, name, &seen) != SNI_NEED_MORE && decided == 0)
			decided = k;
		if (decided != 0 && k >= decided + FUZZ_PREFIX_AFTER)
			break;
		k += k < FUZZ_PREFIX_DENSE ? 1 : 1 + data[k] % 64;
	}
	check_prefix(data, size, r, name, &seen);
	CHECK(seen == r);
}

/* A tiny deterministic generator seeded from the input, for read sizes and cuts. */
static uint32_t next_rand(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* A seed from the input's first bytes and its length. */
static uint32_t seed_of(const uint8_t *data, size_t size)
{
	uint32_t seed = 2166136261u ^ (uint32_t)size;

	for (size_t i = 0; i < size && i < 64; i++)
		seed = (seed ^ data[i]) * 16777619u;
	return seed | 1;
}

/* Feeds data as a socket would, in reads of 1..max bytes appended to an exact-size staging
 * buffer, parsing after each; the first verdict must be the whole input's. */
static void check_reads(const uint8_t *data, size_t size, enum sni_result r, const char *name,
			uint32_t seed, uint32_t max)
{
	uint8_t *stage = malloc(size ? size : 1);
	char got[SNI_NAME_MAX];
	enum sni_result p = SNI_NEED_MORE;
	size_t have = 0;

	CHECK(stage != NULL);
	while (have < size && p == SNI_NEED_MORE) {
		size_t n = 1 + next_rand(&seed) % max;

		if (n > size - have)
			n = size - have;
		memcpy(stage + have, data + have, n);
		have += n;
		p = parse(stage, have, got);
	}
	if (size == 0)
		p = parse(data, 0, got);
	CHECK(p == r);
	if (p == SNI_FOUND)
		CHECK(strcmp(got, name) == 0);
	free(stage);
}

/*
 * For a complete ClientHello (found or no-sni): takes its handshake message out of the records
 * the input split it into, wraps it again in records cut at input-chosen points (1 byte to a
 * full 16 KiB record), and parses that: same verdict and name, or too-big when the new cut
 * needs more than SNI_MAX_INPUT bytes; every shorter prefix of it needs more.
 */
static void check_recut(const uint8_t *data, size_t size, enum sni_result r, const char *name,
			uint32_t seed)
{
	static uint8_t msg[SNI_MAX_HELLO], out[2 * SNI_MAX_INPUT];
	size_t off = 0, got = 0, total = 0, n = 0, mlen;
	char again[SNI_NAME_MAX];
	enum sni_result p;

	if (r != SNI_FOUND && r != SNI_NO_SNI)
		return;
	/* the parser proved these records whole and valid up to the hello's end */
	while (total == 0 || got < total) {
		size_t rl, take;

		CHECK(off + 5 <= size);
		rl = (size_t)data[off + 3] << 8 | data[off + 4];
		off += 5;
		take = rl;
		if (got >= 4 && total - got < take)
			take = total - got;
		for (size_t i = 0; i < take && (total == 0 || got < total); i++) {
			msg[got++] = data[off + i];
			if (got == 4)
				total = 4 + ((size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3]);
		}
		off += rl;
	}
	mlen = total;
	CHECK(mlen <= SNI_MAX_HELLO);

	for (size_t m = 0; m < mlen;) {
		uint32_t pick = next_rand(&seed);
		size_t frag = pick % 4 == 0 ? 1 + pick / 4 % 8 : 1 + pick / 4 % 16384;

		if (frag > mlen - m)
			frag = mlen - m;
		if (n + 5 + frag > sizeof(out))
			break; /* far past SNI_MAX_INPUT: the parse is too-big before this */
		out[n++] = 22;
		out[n++] = 3;
		out[n++] = (uint8_t)(next_rand(&seed) % 5);
		out[n++] = (uint8_t)(frag >> 8);
		out[n++] = (uint8_t)frag;
		memcpy(out + n, msg + m, frag);
		n += frag;
		m += frag;
	}
	p = parse(out, n, again);
	if (p == SNI_TOO_BIG)
		return;
	CHECK(n <= SNI_MAX_INPUT);
	CHECK(p == r);
	if (p == SNI_FOUND)
		CHECK(strcmp(again, name) == 0);
	CHECK(parse(out, n - 1, again) == SNI_NEED_MORE);
	check_reads(out, n, r, name, seed, 4096);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char name[SNI_NAME_MAX], again[SNI_NAME_MAX];
	uint32_t seed = seed_of(data, size);
	enum sni_result r;
	uint8_t *copy;

	/* an exact-size copy: ASan catches any read past len */
	copy = malloc(size ? size : 1);
	CHECK(copy != NULL);
	memcpy(copy, data, size);
	r = parse(copy, size, name);
	CHECK(parse(copy, size, again) == r); /* no hidden state */
	if (r == SNI_FOUND) {
		CHECK(strcmp(name, again) == 0);
		check_routes(name);
	}
	if (size > 0 && copy[0] != 22)
		CHECK(r == SNI_NOT_TLS && parse(copy, 1, again) == SNI_NOT_TLS);

	check_prefixes(copy, size, r, name);
	if (size <= FUZZ_BYTEWISE_MAX)
		check_reads(copy, size, r, name, seed, 1);
	check_reads(copy, size, r, name, seed, 7);
	check_reads(copy, size, r, name, seed, 1500);
	check_recut(copy, size, r, name, seed);
	free(copy);
	return 0;
}
