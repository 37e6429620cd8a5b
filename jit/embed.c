/* Build-time helper: writes a file's bytes as a C array, so libkiln can embed
 * the scalar bitcode without xxd or linker-specific tricks.
 * usage: kn_embed INPUT OUTPUT.c SYMBOL */
#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s INPUT OUTPUT.c SYMBOL\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "w");
    if (!in || !out) {
        perror(in ? argv[2] : argv[1]);
        return 1;
    }
    /* LLVM's bitcode reader wants 4-byte aligned input. */
    fprintf(out, "#include <stddef.h>\n_Alignas(16) const unsigned char %s[] = {", argv[3]);
    size_t n = 0;
    for (int c; (c = getc(in)) != EOF; n++)
        fprintf(out, "%s%d,", n % 24 ? "" : "\n", c);
    fprintf(out, "\n};\nconst size_t %s_len = %zu;\n", argv[3], n);
    int bad = ferror(in) || n == 0;
    fclose(in);
    if (fclose(out) != 0 || bad) {
        fprintf(stderr, "%s: cannot embed %s\n", argv[0], argv[1]);
        return 1;
    }
    return 0;
}
