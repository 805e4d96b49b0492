/* TEMPORARY: replaced by the guard branch. */
#ifndef UPROXY_ACL_H
#define UPROXY_ACL_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
struct config_cidr;
int acl_parse(const char *s, bool allow, struct config_cidr *out, const char **why);
bool acl_allows(const struct config_cidr *acl, uint32_t n, const struct sockaddr *sa);
#endif
