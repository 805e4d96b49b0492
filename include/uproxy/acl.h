/* acl: a listener's allow/deny list (allow/deny lines, --allow/--deny): parsing one entry and
 * deciding for a client address. Checked in order, first match wins, no match = allowed (nginx's
 * stream access module). Pure logic: no allocation, no socket, no ring. */
#ifndef UPROXY_ACL_H
#define UPROXY_ACL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "uproxy/config.h"

/* Parses one entry into *out (out->allow = allow):
 *   "all"                    every address (family AF_UNSPEC, prefix 0);
 *   "a.b.c.d", "v6addr"      one address (/32, /128);
 *   "a.b.c.d/n", "v6addr/n"  a network, n in 0..32 or 0..128.
 * A network with host bits set ("10.0.0.1/8") is rejected, since a typo there silently widens or
 * narrows the rule; the error names the intended network ("write 10.0.0.0/8"). An IPv6 entry in
 * ::ffff:0:0/96 (an IPv4-mapped address, prefix >= 96) is stored as the IPv4 network it names, so
 * it matches IPv4 clients. Brackets and zone ids ("fe80::1%eth0") are rejected.
 * Returns 0, or -EINVAL with *why set (a static string, or this thread's buffer, valid until its
 * next acl_parse call). */
int acl_parse(const char *s, bool allow, struct config_cidr *out, const char **why);

/* Whether the client sa may connect under the n entries of acl: the first entry that matches
 * decides; no match (or n == 0) allows. An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a
 * dual-stack listener reports IPv4 clients) is matched as the IPv4 address a.b.c.d, never
 * against IPv6 entries. AF_UNIX clients (a unix: listener, or a PROXY header of family UNIX) are
 * always allowed: they carry no IP address to check, and the socket file's mode guards them.
 * Any other family (or sa NULL: a PROXY LOCAL/UNKNOWN header) matches only "all" entries. */
bool acl_allows(const struct config_cidr *acl, uint32_t n, const struct sockaddr *sa);

/* Formats e as "allow 10.0.0.0/8", "deny ::1/128" or "deny all" into buf; returns buf. */
const char *acl_format(const struct config_cidr *e, char *buf, size_t len);

#endif
