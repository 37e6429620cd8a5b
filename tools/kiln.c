/* The kiln command-line program. Sub-commands: demo. */
#include <kiln.h>
#include <stdio.h>
#include <string.h>

int kn_demo_main(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "demo")) return kn_demo_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: kiln demo [--epochs N] [--batch N] [--lr X] [--seed N] [--data DIR] [--json]\n");
    return 2;
}
