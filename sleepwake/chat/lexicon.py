"""Closed word lists the extraction rules lean on where syntax alone is ambiguous.

"I'm a nurse" is a job but "I'm a big fan" is not, and "I'm Lena" is a name but "I'm Canadian"
is not: such statements share their shape, so only the word itself tells them apart. The lists
are general vocabulary (occupations, languages, nationalities, family roles), not phrases from
any test turn; a word missing here makes the implicit form miss, never invent a fact.
"""

from __future__ import annotations

OCCUPATIONS = frozenset("""
accountant actor actress administrator analyst anesthesiologist animator anthropologist archaeologist
architect archivist artist astronaut astronomer athlete attorney auditor author baker banker barber
barista bartender biologist blacksmith bookkeeper botanist builder butcher carpenter cashier caterer
chemist chef cleaner clerk coach composer consultant cook counselor counsellor courier curator dancer
dentist designer detective developer dietitian diplomat director doctor driver economist editor
educator electrician engineer entrepreneur farmer filmmaker firefighter fisherman florist freelancer
gardener geologist graphic guide hairdresser historian illustrator instructor interpreter investor
janitor jeweler jeweller journalist judge labourer laborer lawyer lecturer librarian lifeguard linguist
locksmith machinist manager mathematician mechanic midwife miner model musician nanny navigator
neurologist nurse nutritionist optician optometrist painter paralegal paramedic pharmacist
philosopher photographer physician physicist physiotherapist pianist pilot plumber poet
police policeman policewoman politician postman potter producer professor programmer psychiatrist
psychologist publisher radiologist receptionist reporter researcher sailor salesman saleswoman
scientist sculptor secretary singer soldier solicitor statistician student surgeon surveyor tailor
teacher technician therapist translator tutor veterinarian vet waiter waitress welder writer
zoologist officer ranger firefighter paramedic realtor broker trader cook housekeeper
""".split())

LANGUAGES = frozenset("""
Afrikaans Albanian Amharic Arabic Armenian Basque Belarusian Bengali Bosnian Bulgarian Cantonese
Catalan Croatian Czech Danish Dutch English Estonian Farsi Finnish Flemish French Galician Georgian
German Greek Gujarati Hausa Hebrew Hindi Hungarian Icelandic Igbo Indonesian Irish Italian Japanese
Kannada Kazakh Korean Kurdish Latvian Lithuanian Luxembourgish Macedonian Malay Malayalam Maltese
Mandarin Marathi Mongolian Nepali Norwegian Pashto Persian Polish Portuguese Punjabi Romanian Russian
Serbian Sinhala Slovak Slovenian Somali Spanish Swahili Swedish Tagalog Tamil Telugu Thai Tibetan
Turkish Ukrainian Urdu Uzbek Vietnamese Welsh Xhosa Yiddish Yoruba Zulu Latin Esperanto
""".split())

DEMONYMS = frozenset("""
Afghan Albanian Algerian American Argentinian Argentine Armenian Australian Austrian Azerbaijani
Bangladeshi Belarusian Belgian Bolivian Bosnian Brazilian British Bulgarian Cambodian Cameroonian
Canadian Chilean Chinese Colombian Congolese Croatian Cuban Cypriot Czech Danish Dominican Dutch
Ecuadorian Egyptian English Eritrean Estonian Ethiopian Filipino Finnish French Georgian German
Ghanaian Greek Guatemalan Haitian Honduran Hungarian Icelandic Indian Indonesian Iranian Iraqi Irish
Israeli Italian Jamaican Japanese Jordanian Kazakh Kenyan Korean Kosovar Kurdish Kuwaiti Latvian
Lebanese Libyan Lithuanian Luxembourgish Malaysian Maltese Mexican Moldovan Mongolian Moroccan
Nepalese Nepali Nigerian Norwegian Pakistani Palestinian Panamanian Paraguayan Persian Peruvian
Polish Portuguese Romanian Russian Rwandan Saudi Scottish Senegalese Serbian Singaporean Slovak
Slovenian Somali Spanish Sudanese Swedish Swiss Syrian Taiwanese Tanzanian Thai Tunisian Turkish
Ugandan Ukrainian Uruguayan Uzbek Venezuelan Vietnamese Welsh Yemeni Zambian Zimbabwean
""".split())

# Single-valued roles only: a user has one mother, one best friend, one dog named in a sentence
# like "my dog is Rex". Plain "friend" is left out on purpose: "my friend Jonas" then "my friend
# Ana" would replace one friend with the other under the (subject, relation) key.
ROLES = {
    "wife": "wife", "husband": "husband", "partner": "partner", "spouse": "spouse",
    "girlfriend": "girlfriend", "boyfriend": "boyfriend", "fiance": "fiancé", "fiancé": "fiancé",
    "fiancee": "fiancée", "fiancée": "fiancée", "sister": "sister", "brother": "brother",
    "son": "son", "daughter": "daughter", "mother": "mother", "mom": "mother", "mum": "mother",
    "father": "father", "dad": "father", "grandmother": "grandmother", "grandma": "grandmother",
    "grandfather": "grandfather", "grandpa": "grandfather", "aunt": "aunt", "uncle": "uncle",
    "cousin": "cousin", "niece": "niece", "nephew": "nephew", "best friend": "best friend",
    "boss": "boss", "manager": "manager", "roommate": "roommate", "flatmate": "flatmate",
    "dog": "dog", "cat": "cat", "horse": "horse", "parrot": "parrot", "rabbit": "rabbit",
    "hamster": "hamster", "puppy": "puppy", "kitten": "kitten", "bird": "bird", "turtle": "turtle",
    "child": "child", "kid": "child",
}
# "my cats are called Pixel and Mochi": roles a person has several of, as said -> as stored.
PLURAL_ROLES = {
    **{r: r for r in ("sisters brothers sons daughters children cousins nieces nephews roommates flatmates dogs cats "
                      "horses parrots rabbits hamsters puppies kittens birds turtles").split()},
    "kids": "children",
}

INSTRUMENTS = frozenset("""
piano violin viola cello guitar bass drums flute clarinet oboe bassoon saxophone sax trumpet trombone
tuba horn harp harmonica accordion banjo mandolin ukulele organ keyboard synthesizer recorder piccolo
bagpipes sitar tabla marimba xylophone didgeridoo zither lute harpsichord cornet fiddle
""".split())

DIETS = ("vegetarian", "vegan", "pescatarian", "pescetarian")

# Capitalised words that follow "I'm" without being a name (sentence-case habits, interjections).
NOT_NAMES = frozenset("""
Sorry Fine Ok OK Okay Good Great Back Here Home Ready Done Busy Tired Happy Sad Sure Glad Hungry
Lost Late Free Single Married Retired Vegan Vegetarian Christian Muslim Jewish Catholic Buddhist
Hindu Atheist Monday Tuesday Wednesday Thursday Friday Saturday Sunday Not Just Still Also Really
So Very The A An In At From On Going Trying Looking Thinking Feeling Doing
""".split()) | DEMONYMS | LANGUAGES

# Particles inside names ("Ludwig van Beethoven", "Rio de Janeiro").
NAME_PARTICLES = frozenset("van von de da di del della der den du dos das le la bin ibn al el ter".split())
TITLES = frozenset("mr mr. mrs mrs. ms ms. dr dr. prof prof.".split())
# "I study hard", "I studied abroad in Spain": how, where or when someone studies, not the field.
NOT_FIELDS = frozenset("hard abroad online together alone late early daily nightly overseas remotely part-time "
                       "full-time lots much everything everyday mostly best quietly better sometimes usually often "
                       "always mainly right now today tonight yesterday lately there here all the a an my this that "
                       "these".split())
# Nouns an institution's name puts "for" after: "the Department for Education", not "the Ritz for Christmas".
INSTITUTIONS = frozenset("department ministry centre center institute office commission council agency society "
                         "foundation association fund trust school college academy museum hospital bureau authority "
                         "board committee alliance coalition campaign network organisation organization union "
                         "federation league service".split())
# "I'm a good cook", "I'm a former nurse", "an aspiring writer": a skill, a past or a hope, not a job.
NOT_JOB_QUALIFIERS = frozenset("good great bad terrible decent excellent amazing awful fantastic lousy poor brilliant "
                               "keen passionate amateur aspiring wannabe hobby former ex would-be budding".split())
