# Shell functions the study scripts share (source it).

# The teacher share of WORKDIR's teacher pass, so that a work directory copied from it asks `vocabert embed`
# for the same pass (and finds it current) whatever the default share is.
teacher_share() {
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"]["settings"]["teacher_share"])' \
    "$1/teacher/manifest.json"
}
