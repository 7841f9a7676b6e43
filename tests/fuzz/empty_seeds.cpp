// A seed generator for fuzz targets that start from nothing: writes no files.
int main() { return 0; }
