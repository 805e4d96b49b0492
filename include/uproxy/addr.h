/* addr: parsing "[HOST]:PORT" strings, resolving them, printing and comparing socket addresses.
 * Pure logic apart from addr_resolve (getaddrinfo); never touches the ring. */
#ifndef UPROXY_ADDR_H
#define UPROXY_ADDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ADDR_HOST_MAX	  254			  /* a DNS name is at most 253 characters */
#define ADDR_STRLEN	  (INET6_ADDRSTRLEN + 10) /* "[v6]:65535" */
#define ADDR_MAX_RESOLVED 16			  /* addresses kept per name */

/* A parsed, unresolved "[HOST]:PORT". */
struct hostport {
	char host[ADDR_HOST_MAX]; /* empty when any is set */
	uint16_t port;
	bool any;	/* ":PORT" or "*:PORT": every local address */
	bool unix_sock; /* "unix:/path": host holds the path (< 108 bytes), port is 0 */
};

struct addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
		struct sockaddr_storage ss;
	} u;
	socklen_t len;
};

/* Parses s into *out. Returns 0, or -EINVAL with *why set to a static explanation. */
int addr_parse(const char *s, struct hostport *out, const char **why);

/* Resolves a parsed host (not any) into at most max addresses, in resolver order, without
 * duplicates. Returns the count (> 0), or -1 with why (at least 128 bytes) filled. */
int addr_resolve(const struct hostport *hp, struct addr *out, int max, char *why, size_t whylen);

/* Formats a as "1.2.3.4:80" or "[::1]:80" into buf (ADDR_STRLEN bytes); returns buf. */
const char *addr_format(const struct addr *a, char *buf, size_t len);

/* Formats a hostport back into its canonical text form; returns buf. */
const char *addr_format_hostport(const struct hostport *hp, char *buf, size_t len);

/* The one address equality: true when a and b name the same socket endpoint, that is the same
 * family, address and port, and for IPv6 the same scope id (fe80::1%eth0 and fe80::1%eth1 are
 * different hosts). The IPv6 flow label names no endpoint and is ignored. An IPv4 address and
 * its v4-mapped IPv6 form (::ffff:a.b.c.d) are different families, so not equal. Addresses of
 * any other family (e.g. a zeroed struct addr) are equal when their bytes are. */
bool addr_equal(const struct addr *a, const struct addr *b);

/* Builds a struct addr from a sockaddr of a known length. */
void addr_from_sockaddr(struct addr *a, const struct sockaddr *sa, socklen_t len);

#endif
