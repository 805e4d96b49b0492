/* acl: parses allow/deny entries and matches client addresses against them, first match wins.
 * IPv4-mapped IPv6 addresses are IPv4 here, both in entries and in clients, so one rule covers a
 * client whether it reached a dual-stack or an IPv4 listener. */
#include "uproxy/acl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* The first 12 bytes of an IPv4-mapped IPv6 address (RFC 4291 2.5.5.2). */
static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

#define ACL_TEXT_MAX 64 /* longer than any address/prefix ("ffff:...:ffff/128" is 43) */

/* Why host bits were rejected; per thread so concurrent parsers (tests) cannot mix messages. */
static __thread char host_bits_why[160];

/* True if the first bits bits of a and b are equal. */
static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned int bits)
{
	unsigned int full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[full] ^ b[full]) & (uint8_t)(0xff00u >> rest)) == 0;
}

/* Clears every bit of addr (len bytes) after the first bits; true if any was set. */
static bool clear_host_bits(uint8_t *addr, unsigned int len, unsigned int bits)
{
	bool had = false;

	for (unsigned int i = 0; i < len; i++) {
		unsigned int keep = bits > i * 8 ? bits - i * 8 : 0;
		uint8_t mask = keep >= 8 ? 0xff : (uint8_t)(0xff00u >> keep);

		had |= (addr[i] & (uint8_t)~mask) != 0;
		addr[i] &= mask;
	}
	return had;
}

/* Parses the decimal prefix length in s (digits only, no sign, no leading zeros but "0"). */
static int parse_prefix(const char *s, unsigned int max, unsigned int *out)
{
	unsigned int v = 0;

	if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (unsigned int)(*s - '0');
		if (v > max)
			return -EINVAL;
	}
	*out = v;
	return 0;
}

int acl_parse(const char *s, bool allow, struct config_cidr *out, const char **why)
{
	char text[ACL_TEXT_MAX], net[INET6_ADDRSTRLEN];
	const char *slash;
	unsigned int prefix, max;
	size_t alen;

	memset(out, 0, sizeof(*out));
	out->allow = allow;
	if (strcmp(s, "all") == 0) {
		out->family = AF_UNSPEC;
		return 0;
	}
	if (*s == '\0') {
		*why = "expected an address, a CIDR network or \"all\"";
		return -EINVAL;
	}
	if (strchr(s, '[') != NULL || strchr(s, ']') != NULL) {
		*why = "write IPv6 addresses without brackets, e.g. 2001:db8::/32";
		return -EINVAL;
	}
	if (strchr(s, '%') != NULL) {
		*why = "zone ids (%IFACE) are not allowed in an access list";
		return -EINVAL;
	}
	slash = strchr(s, '/');
	alen = slash ? (size_t)(slash - s) : strlen(s);
	if (alen >= sizeof(text)) {
		*why = "expected an address, a CIDR network or \"all\" (too long)";
		return -EINVAL;
	}
	memcpy(text, s, alen);
	text[alen] = '\0';
	if (inet_pton(AF_INET, text, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, text, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		*why = "expected an IPv4 or IPv6 address (a.b.c.d[/n], v6addr[/n]) or \"all\"";
		return -EINVAL;
	}
	prefix = max;
	if (slash != NULL && parse_prefix(slash + 1, max, &prefix) < 0) {
		*why = out->family == AF_INET ? "the prefix length after '/' must be 0..32"
					      : "the prefix length after '/' must be 0..128";
		return -EINVAL;
	}
	if (clear_host_bits(out->addr, max / 8, prefix)) {
		inet_ntop(out->family, out->addr, net, sizeof(net));
		snprintf(host_bits_why, sizeof(host_bits_why),
			 "%s has host bits set beyond the /%u prefix; write %s/%u", s, prefix, net,
			 prefix);
		*why = host_bits_why;
		return -EINVAL;
	}
	/* ::ffff:a.b.c.d/n (n >= 96) is the IPv4 network a.b.c.d/(n - 96): clients are matched
	 * that way too. */
	if (out->family == AF_INET6 && prefix >= 96 &&
	    memcmp(out->addr, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
		memmove(out->addr, out->addr + 12, 4);
		memset(out->addr + 4, 0, 12);
		out->family = AF_INET;
		prefix -= 96;
	}
	out->prefix = (uint8_t)prefix;
	return 0;
}

bool acl_allows(const struct config_cidr *acl, uint32_t n, const struct sockaddr *sa)
{
	const uint8_t *addr = NULL;
	int family = sa ? sa->sa_family : AF_UNSPEC;

	if (family == AF_UNIX)
		return true;
	if (family == AF_INET) {
		addr = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
	} else if (family == AF_INET6) {
		addr = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		if (memcmp(addr, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
			addr += 12;
			family = AF_INET;
		}
	} else {
		family = AF_UNSPEC; /* matches "all" only */
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct config_cidr *e = &acl[i];

		if (e->family == AF_UNSPEC ||
		    (e->family == family && prefix_equal(e->addr, addr, e->prefix)))
			return e->allow;
	}
	return true;
}

const char *acl_format(const struct config_cidr *e, char *buf, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	if (e->family != AF_INET && e->family != AF_INET6) {
		snprintf(buf, len, "%s all", e->allow ? "allow" : "deny");
		return buf;
	}
	inet_ntop(e->family, e->addr, a, sizeof(a));
	snprintf(buf, len, "%s %s/%u", e->allow ? "allow" : "deny", a, e->prefix);
	return buf;
}
